//! Spec keys, packet type strings and other protocol constants, exactly as hoop spells them
//! (`common/proto/const.go`, `common/proto/agent/agent.go`, `common/proto/client/client.go`).
//!
//! Only this crate uses these strings: the rest of the workspace sees typed packets.

/// Spec keys (`Packet.spec` map keys).
pub mod key {
    pub const SESSION_ID: &str = "gateway.session_id";
    pub const CONNECTION_NAME: &str = "gateway.connection_name";
    pub const CONNECTION_TYPE: &str = "gateway.connection_type";
    pub const CONNECTION_COMMAND: &str = "gateway.connection_command";
    pub const EXIT_CODE: &str = "client.exit_code";
    pub const REQUEST_PORT: &str = "client.request_port";
    pub const COMMAND: &str = "client.command";
    pub const TERMINAL_ARGS: &str = "terminal.args";
    pub const TERMINAL_ENVVARS: &str = "terminal.envvars";
    pub const AGENT_VERSION: &str = "agent.version";
    pub const CONNECTION_PARAMS: &str = "agent.connection_params";
    pub const FEATURE_FLAGS: &str = "feature-flags";
    pub const JIT_TIMEOUT: &str = "jit.timeout";
    /// The client's id of one TCP flow in a `tcp` session (a decimal counter from `1`).
    pub const CLIENT_CONNECTION_ID: &str = "client.connection_id";
    /// Present (empty) on the first `AgentTCPConnectionWrite` of a flow: "dial now", no data.
    pub const TCP_SERVER_CONNECT: &str = "tcp.server_connect";
}

/// Packet type strings (`Packet.type`).
pub mod packet_type {
    // Addressed to the agent.
    pub const AGENT_GATEWAY_CONNECT_OK: &str = "AgentGatewayConnectOK";
    pub const AGENT_SESSION_OPEN: &str = "AgentSessionOpen";
    pub const AGENT_SESSION_CLOSE: &str = "AgentSessionClose";
    pub const AGENT_EXEC_WRITE_STDIN: &str = "AgentExecWriteStdin";
    pub const AGENT_TERMINAL_WRITE_STDIN: &str = "AgentTerminalWriteStdin";
    pub const AGENT_TERMINAL_RESIZE_TTY: &str = "AgentTerminalResizeTTY";
    pub const AGENT_TERMINAL_CLOSE: &str = "AgentTerminalClose";
    pub const AGENT_TCP_CONNECTION_WRITE: &str = "AgentTCPConnectionWrite";
    pub const AGENT_TCP_CONNECTION_CLOSE: &str = "AgentCloseTCPConnection";
    // Addressed to the client.
    pub const CLIENT_SESSION_OPEN_OK: &str = "ClientSessionOpenOK";
    pub const CLIENT_SESSION_OPEN_TIMEOUT: &str = "ClientSessionOpenTimeout";
    pub const CLIENT_SESSION_OPEN_WAITING_APPROVAL: &str = "ClientSessionOpenWaitingApproval";
    pub const CLIENT_SESSION_OPEN_APPROVE_OK: &str = "ClientSessionOpenApproveOK";
    pub const CLIENT_SESSION_OPEN_AGENT_OFFLINE: &str = "ClientSessionOpenAgentOffline";
    pub const CLIENT_SESSION_CLOSE: &str = "ClientSessionClose";
    pub const CLIENT_WRITE_STDOUT: &str = "ClientWriteStdout";
    pub const CLIENT_WRITE_STDERR: &str = "ClientWriteStderr";
    pub const CLIENT_AGENT_LOGS: &str = "ClientAgentLogs";
    pub const CLIENT_TCP_CONNECTION_WRITE: &str = "ClientTCPConnectionWrite";
    pub const CLIENT_TCP_CONNECTION_CLOSE: &str = "ClientTCPConnectionClose";
    // Gateway control.
    pub const GATEWAY_KEEP_ALIVE: &str = "GatewayKeepAlive";
    pub const KEEP_ALIVE: &str = "KeepAlive";
    pub const GATEWAY_FEATURE_FLAG_UPDATE: &str = "GatewayFeatureFlagUpdate";
    /// Prefix of gateway <-> agent system RPCs (`SysBareExecRequest`, ...).
    pub const SYS_PREFIX: &str = "Sys";
    // System requests (gateway -> agent) and their replies (agent -> gateway), §2.7.
    pub const SYS_PROVISION_DB_ROLES_REQUEST: &str = "SysProvisionDBRolesRequest";
    pub const SYS_PROVISION_DB_ROLES_RESPONSE: &str = "SysProvisionDBRolesResponse";
    pub const SYS_RUNBOOK_HOOK_REQUEST: &str = "SysRunbookHookRequestType";
    pub const SYS_RUNBOOK_HOOK_RESPONSE: &str = "SysRunbookHookResponseType";
    pub const SYS_BARE_EXEC_REQUEST: &str = "SysBareExecRequest";
    pub const SYS_BARE_EXEC_RESPONSE: &str = "SysBareExecResponse";
    pub const SYS_PG_MANAGER_PLAN_REQUEST: &str = "SysPgManagerPlanRequest";
    pub const SYS_PG_MANAGER_PLAN_RESPONSE: &str = "SysPgManagerPlanResponse";
    pub const SYS_PG_MANAGER_APPLY_REQUEST: &str = "SysPgManagerApplyRequest";
    pub const SYS_PG_MANAGER_APPLY_RESPONSE: &str = "SysPgManagerApplyResponse";
}

/// gRPC metadata keys and values.
pub mod metadata {
    pub const AUTHORIZATION: &str = "authorization";
    pub const ORIGIN: &str = "origin";
    pub const ORIGIN_AGENT: &str = "agent";
    pub const ORIGIN_CLIENT: &str = "client";
    pub const VERSION: &str = "version";
    pub const GO_VERSION: &str = "go-version";
    pub const COMPILER: &str = "compiler";
    pub const PLATFORM: &str = "platform";
    pub const HOSTNAME: &str = "hostname";
    pub const MACHINE_ID: &str = "machine-id";
    pub const KERNEL_VERSION: &str = "kernel-version";
    pub const CONNECTION_NAME: &str = "connection-name";
    pub const VERB: &str = "verb";
}

/// Connection type for command-line connections.
pub const CONNECTION_TYPE_COMMAND_LINE: &str = "command-line";
/// Connection type for raw TCP relays (hoop-gateway-protocol.md §3.7).
pub const CONNECTION_TYPE_TCP: &str = "tcp";
/// Env value marker meaning "use the agent's own variable of that name".
pub const SYSTEM_AGENT_ENVS: &str = "system.agent.envs";
/// The exit code hoop uses for every internal or agent-side failure.
pub const INTERNAL_EXIT_CODE: i32 = 254;
/// The largest message hoop's gateway accepts (`MaxRecvMsgSize`, 17 MiB).
pub const MAX_MESSAGE_SIZE: usize = 17 * 1024 * 1024;
/// The largest gRPC message the agent reads. Larger than [`MAX_MESSAGE_SIZE`] on purpose: a
/// packet between the two is refused on its own (its session gets a clear error) instead of
/// failing the whole stream, which is what exceeding the decoder limit does.
pub const MAX_INBOUND_MESSAGE_SIZE: usize = 32 * 1024 * 1024;
/// Application-level keepalive period (`DefaultKeepAlive`).
pub const KEEPALIVE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);
