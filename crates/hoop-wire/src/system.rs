//! hoop's gateway ⇄ agent system requests (`Sys*`, hoop-gateway-protocol.md §2.7): which ones
//! exist, the reply type for each, and the failure reply an agent that serves none of them
//! sends at once, so that the gateway's caller does not wait out its timeout (up to 10 min).
//!
//! Owns the packet type strings and the payload shapes (JSON, or YAML for the PG manager).
//! It does not run anything: this agent answers every request with a failure.

use bytes::Bytes;

use crate::spec::packet_type as pt;

/// A system request the gateway sends an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SysKind {
    ProvisionDbRoles,
    RunbookHook,
    BareExec,
    PgManagerPlan,
    PgManagerApply,
}

impl SysKind {
    /// Every system request, for tests and tables.
    pub const ALL: [SysKind; 5] = [
        SysKind::ProvisionDbRoles,
        SysKind::RunbookHook,
        SysKind::BareExec,
        SysKind::PgManagerPlan,
        SysKind::PgManagerApply,
    ];

    /// The request's packet type, if `packet_type` is one.
    pub fn from_request_type(packet_type: &str) -> Option<SysKind> {
        SysKind::ALL
            .into_iter()
            .find(|k| k.request_type() == packet_type)
    }

    /// The reply's packet type, if `packet_type` is one.
    pub fn from_response_type(packet_type: &str) -> Option<SysKind> {
        SysKind::ALL
            .into_iter()
            .find(|k| k.response_type() == packet_type)
    }

    /// The request's packet type (gateway → agent).
    pub fn request_type(self) -> &'static str {
        match self {
            SysKind::ProvisionDbRoles => pt::SYS_PROVISION_DB_ROLES_REQUEST,
            SysKind::RunbookHook => pt::SYS_RUNBOOK_HOOK_REQUEST,
            SysKind::BareExec => pt::SYS_BARE_EXEC_REQUEST,
            SysKind::PgManagerPlan => pt::SYS_PG_MANAGER_PLAN_REQUEST,
            SysKind::PgManagerApply => pt::SYS_PG_MANAGER_APPLY_REQUEST,
        }
    }

    /// The reply's packet type (agent → gateway).
    pub fn response_type(self) -> &'static str {
        match self {
            SysKind::ProvisionDbRoles => pt::SYS_PROVISION_DB_ROLES_RESPONSE,
            SysKind::RunbookHook => pt::SYS_RUNBOOK_HOOK_RESPONSE,
            SysKind::BareExec => pt::SYS_BARE_EXEC_RESPONSE,
            SysKind::PgManagerPlan => pt::SYS_PG_MANAGER_PLAN_RESPONSE,
            SysKind::PgManagerApply => pt::SYS_PG_MANAGER_APPLY_RESPONSE,
        }
    }

    /// The failure reply for request `id` (the request's `gateway.session_id`, echoed as is:
    /// it is not always a UUID) in the shape the gateway's caller decodes (§2.7).
    pub fn failure_payload(self, id: &str, reason: &str) -> Bytes {
        let json = match self {
            SysKind::RunbookHook => serde_json::json!({
                "id": id, "exit_code": -2, "output": reason, "execution_time_sec": 0,
            }),
            SysKind::BareExec => serde_json::json!({
                "sid": id, "status": "failed", "output": reason,
            }),
            SysKind::ProvisionDbRoles => serde_json::json!({
                "sid": id, "status": "failed", "message": reason, "result": [],
            }),
            SysKind::PgManagerPlan | SysKind::PgManagerApply => {
                // YAML. A JSON string is a valid YAML double-quoted scalar, so the values are
                // written with serde_json's escaping instead of a YAML library.
                let q = |s: &str| serde_json::Value::from(s).to_string();
                return Bytes::from(format!(
                    "sid: {}\nstatus: failed\nmessage: {}\n",
                    q(id),
                    q(reason)
                ));
            }
        };
        Bytes::from(json.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn every_request_has_its_own_reply_type() {
        for k in SysKind::ALL {
            assert_eq!(SysKind::from_request_type(k.request_type()), Some(k));
            assert_eq!(SysKind::from_response_type(k.response_type()), Some(k));
            assert_eq!(
                k.response_type(),
                k.request_type().replace("Request", "Response")
            );
        }
        assert_eq!(SysKind::from_request_type("SysSomethingNew"), None);
    }

    #[test]
    fn failure_payloads_have_the_shapes_the_gateway_decodes() {
        let id = "federation-probe-1\"x";
        let reason = "not supported: \"quoted\"\nline";
        let v: serde_json::Value =
            serde_json::from_slice(&SysKind::BareExec.failure_payload(id, reason)).unwrap();
        assert_eq!(v["sid"], id);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["output"], reason);
        let v: serde_json::Value =
            serde_json::from_slice(&SysKind::RunbookHook.failure_payload(id, reason)).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["exit_code"].as_i64()),
            (Some(id), Some(-2))
        );
        let v: serde_json::Value =
            serde_json::from_slice(&SysKind::ProvisionDbRoles.failure_payload(id, reason)).unwrap();
        assert_eq!(v["message"], reason);
        assert_eq!(v["result"], serde_json::json!([]));
        let yaml = SysKind::PgManagerPlan.failure_payload(id, reason);
        let yaml = std::str::from_utf8(&yaml).unwrap();
        assert!(yaml.contains("\nstatus: failed\n"), "{yaml}");
        // Each value is one line (escaped), so a hostile id cannot add YAML keys.
        assert_eq!(yaml.lines().count(), 3, "{yaml}");
    }
}
