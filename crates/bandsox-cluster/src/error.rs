//! Errors of the cluster layer.

/// What can go wrong talking to the cluster store or to another node.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No etcd member answered within the deadline (quorum lost, or all members down).
    #[error("the cluster store is unavailable: {detail}")]
    Unavailable { detail: String },
    /// etcd answered with an error that retrying elsewhere does not fix.
    #[error("etcd refused the request: {message} (code {code})")]
    Etcd { code: i64, message: String },
    /// A cluster setting is not acceptable (member list, node name, address, secret).
    #[error("{0}")]
    Invalid(String),
    /// Another live node already uses this node name.
    #[error("node name `{0}` is already used by another live node")]
    NameTaken(String),
    /// A record in etcd or an answer of etcd could not be decoded.
    #[error("cannot decode {what}: {detail}")]
    Decode { what: &'static str, detail: String },
}

impl ClusterError {
    /// The stable problem code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "cluster_unavailable",
            Self::Etcd { .. } | Self::Decode { .. } => "cluster_error",
            Self::Invalid(_) => "invalid_input",
            Self::NameTaken(_) => "node_name_taken",
        }
    }

    /// A hint for the operator, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Unavailable { .. } => Some(
                "check that a majority of the etcd members given to --cluster are running and reachable; VMs keep running on their nodes",
            ),
            Self::NameTaken(_) => Some(
                "pick another --node-name, or wait until the old node's lease expires (--cluster-lease-ttl)",
            ),
            _ => None,
        }
    }
}
