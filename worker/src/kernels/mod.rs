//! Pure merge kernels: slices in, slices out. No I/O, no async.
//!
//! Each method is one file here plus one entry in [`crate::methods`]. Kernels take input
//! tensors already converted to f32 values that are exactly representable in the working dtype
//! and write values rounded to it.

pub mod arcee_chunk;
pub mod arcee_fusion;
pub mod breadcrumbs;
pub mod della;
pub mod della_chunk;
pub mod gta;
mod gta_chunk;
pub mod gta_masked;
pub mod gta_stream;
pub mod karcher;
pub(crate) mod karcher_ops;
pub mod karcher_stream;
pub mod linear;
pub mod magnitude_select;
pub mod model_stock;
pub mod model_stock_chain;
pub mod model_stock_stream;
pub mod multislerp;
pub mod multislerp_stream;
pub mod nearswap;
pub mod nuslerp;
pub mod nuslerp_columns;
pub mod nuslerp_stream;
pub mod outlier_select;
pub mod passthrough;
pub mod precision;
pub mod ram;
pub mod sce;
pub mod sce_chunk;
pub(crate) mod simd;
pub mod slerp;
pub mod slerp_stream;
pub mod sparsify;
pub mod stream_ops;
#[cfg(test)]
mod test_vectors;
pub mod torch_norm;
pub mod torch_sum;
pub mod torch_sum_partial;
pub mod torch_sum_stream;
pub mod torch_trig;

pub use precision::{Precision, WorkDType};
