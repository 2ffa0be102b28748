//! Generated tonic/prost code for every service of the plane, one module per `.proto` package,
//! re-exported under short names (`oa_proto::agents`, `oa_proto::common`, ...).
//!
//! Besides, [`status`] carries the API's errors across gRPC. Domain types are never prost types:
//! each service converts at its edge (its own `convert.rs`).

pub mod status;

#[allow(clippy::all, clippy::pedantic)]
pub mod oneagents {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("oneagents.common.v1");
        }
    }
    pub mod catalog {
        pub mod v1 {
            tonic::include_proto!("oneagents.catalog.v1");
        }
    }
    pub mod agents {
        pub mod v1 {
            tonic::include_proto!("oneagents.agents.v1");
        }
    }
    pub mod executions {
        pub mod v1 {
            tonic::include_proto!("oneagents.executions.v1");
        }
    }
    pub mod approvals {
        pub mod v1 {
            tonic::include_proto!("oneagents.approvals.v1");
        }
    }
    pub mod credits {
        pub mod v1 {
            tonic::include_proto!("oneagents.credits.v1");
        }
    }
    /// The bench's raw read, the baseline of the gateway's reads; no service serves it.
    pub mod bench {
        pub mod v1 {
            tonic::include_proto!("oneagents.bench.v1");
        }
    }
}

pub use oneagents::agents::v1 as agents;
pub use oneagents::approvals::v1 as approvals;
pub use oneagents::bench::v1 as bench;
pub use oneagents::catalog::v1 as catalog;
pub use oneagents::common::v1 as common;
pub use oneagents::credits::v1 as credits;
pub use oneagents::executions::v1 as executions;
