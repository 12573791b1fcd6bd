//! Fuzz target `packet`: arbitrary bytes as a protobuf `Packet` from the gateway.
//!
//! The bytes are decoded both strictly (`pb::Packet`, UTF-8 checked) and leniently
//! (`pb::WirePacket`, what the agent really reads), then through the typed decoding of
//! `hoop_wire::packet` in both directions (`AgentPacket`, spec values and the gob inside them;
//! `ClientPacket`). Checked: nothing panics; when the bytes decode both ways, the two views give
//! the same typed packet; a decoded `AgentPacket` survives `into_packet` and decoding again
//! unchanged; `ClientPacket` reaches a fixed point after one round trip (its encoder fills in
//! defaults, exit code 254 and an empty request port, that decoding then reads back).

#![no_main]

use hoop_wire::pb::{Packet, WirePacket};
use hoop_wire::{AgentPacket, ClientPacket};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let lenient = WirePacket::decode(data).ok();
    if let Some(wire) = &lenient {
        check_agent(AgentPacket::decode(wire));
        check_client(ClientPacket::decode(wire));
    }
    if let Ok(strict) = Packet::decode(data) {
        let agent = AgentPacket::decode(&strict);
        let client = ClientPacket::decode(&strict);
        // Any bytes that are a valid `Packet` are a valid `WirePacket` with the same fields.
        let wire = lenient.expect("a valid Packet is a valid WirePacket");
        assert_eq!(
            agent,
            AgentPacket::decode(&wire),
            "strict and lenient views differ"
        );
        assert_eq!(
            client,
            ClientPacket::decode(&wire),
            "strict and lenient views differ"
        );
        let converted = WirePacket::from(strict);
        assert_eq!(agent, AgentPacket::decode(&converted));
        check_agent(agent);
        check_client(client);
    }
});

fn check_agent(decoded: Result<AgentPacket, hoop_wire::DecodeError>) {
    let Ok(first) = decoded else { return };
    let again = AgentPacket::decode(&first.clone().into_packet());
    assert_eq!(
        again.as_ref(),
        Ok(&first),
        "AgentPacket round trip changed the packet"
    );
}

fn check_client(decoded: Result<ClientPacket, hoop_wire::DecodeError>) {
    let Ok(first) = decoded else { return };
    let once = ClientPacket::decode(&first.into_packet());
    let once = once.expect("an encoded ClientPacket decodes");
    let twice = ClientPacket::decode(&once.clone().into_packet());
    assert_eq!(
        twice.as_ref(),
        Ok(&once),
        "ClientPacket round trip is not stable"
    );
}
