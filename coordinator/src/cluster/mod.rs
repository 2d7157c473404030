//! The cluster control plane: work units, the lease scheduler, the job journal and the gRPC
//! services of the coordinator process.

pub mod scheduler;
pub mod units;
