//! The cluster control plane: work units, the lease scheduler, the job journal and the gRPC
//! services of the coordinator process.

pub mod allow;
pub mod auth;
pub mod client;
pub mod grpc;
pub mod journal;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod units;
