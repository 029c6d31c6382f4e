//! Why the shim reports a room as ended. The broker says why a partner left
//! ([`DisconnectReason`], on the wire); two more reasons exist only here,
//! because only a shim can see them: it lost its broker, or found a new one
//! that never knew the room. They never travel on the socket, so they are
//! not part of the wire enum.

use std::fmt;

use mcp_chat_proto::DisconnectReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// What the broker said.
    Broker(DisconnectReason),
    /// The shim lost its broker connection and could not get it back.
    BrokerLost,
    /// The broker restarted and the room did not survive it.
    BrokerRestart,
}

impl EndReason {
    /// The name models and people read, as in `partner.disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Broker(reason) => reason.as_str(),
            Self::BrokerLost => "broker_lost",
            Self::BrokerRestart => "broker_restart",
        }
    }
}

impl From<DisconnectReason> for EndReason {
    fn from(reason: DisconnectReason) -> Self {
        Self::Broker(reason)
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_ones_clients_always_saw() {
        assert_eq!(EndReason::from(DisconnectReason::Left).as_str(), "left");
        assert_eq!(EndReason::BrokerLost.as_str(), "broker_lost");
        assert_eq!(EndReason::BrokerRestart.as_str(), "broker_restart");
    }
}
