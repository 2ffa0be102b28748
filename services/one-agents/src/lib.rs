//! The `one-agents` binary's library side: the container probes. The plane itself is `oa-plane`.

pub mod probe;
