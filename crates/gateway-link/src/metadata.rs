//! The metadata an agent presents on `Connect` (hoop-gateway-protocol.md §1.4).
//!
//! Collected once at start. Values that are unavailable on this host are sent as empty
//! strings, as hoop's agent does; none of them carries a secret except `authorization`,
//! which is added by the link and never logged.

use hoop_wire::spec::metadata as md;

/// Host facts sent with every `Connect`.
#[derive(Debug, Clone)]
pub struct AgentMetadata {
    pub version: String,
    pub platform: String,
    pub hostname: String,
    pub machine_id: String,
    pub kernel_version: String,
    pub compiler: String,
    pub runtime_version: String,
}

impl AgentMetadata {
    /// Reads the host facts.
    pub fn collect(version: &str) -> AgentMetadata {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let uname = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uname
                .as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let hostname = field(|u| u.nodename());
        let kernel_version = [
            field(|u| u.sysname()),
            hostname.clone(),
            field(|u| u.release()),
            field(|u| u.version()),
            field(|u| u.machine()),
        ]
        .join(" ");
        let machine_id = ["/sys/class/dmi/id/product_uuid", "/etc/machine-id"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        AgentMetadata {
            version: version.to_owned(),
            platform: format!("{}/{arch}", std::env::consts::OS),
            hostname,
            machine_id,
            kernel_version,
            compiler: "rustc".into(),
            runtime_version: format!("dynoagent {version} (rust)"),
        }
    }

    /// The `(key, value)` pairs, excluding `authorization`.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            (md::ORIGIN, md::ORIGIN_AGENT.to_owned()),
            (md::VERSION, self.version.clone()),
            (md::GO_VERSION, self.runtime_version.clone()),
            (md::COMPILER, self.compiler.clone()),
            (md::PLATFORM, self.platform.clone()),
            (md::HOSTNAME, self.hostname.clone()),
            (md::MACHINE_ID, self.machine_id.clone()),
            (md::KERNEL_VERSION, self.kernel_version.clone()),
        ]
    }
}
