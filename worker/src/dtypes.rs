//! Conversions between the three dtype vocabularies: the wire's [`DType`] (proto), the
//! safetensors file's [`Dtype`], and the kernels' working [`WorkDType`]. The planner and the
//! workers both use these, so a dtype means the same on either side of the wire.

use crate::kernels::WorkDType;
use safetensors::Dtype;
use shardmerge_proto::v1::DType;

/// The safetensors dtype of a wire dtype (`None` for an unspecified one).
pub fn storage_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::Unspecified => return None,
    })
}

/// The wire dtype of a safetensors dtype (`Unspecified` for one the wire does not carry).
pub fn wire_dtype(d: Dtype) -> DType {
    match d {
        Dtype::BF16 => DType::Bf16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        _ => DType::Unspecified,
    }
}

/// The working dtype of stored values of dtype `d` (`None` for a non-float or f64 tensor).
pub fn work_of_storage(d: Dtype) -> Option<WorkDType> {
    match d {
        Dtype::BF16 => Some(WorkDType::Bf16),
        Dtype::F16 => Some(WorkDType::F16),
        Dtype::F32 => Some(WorkDType::F32),
        _ => None,
    }
}

/// The safetensors dtype that stores values of working dtype `w`.
pub fn storage_of_work(w: WorkDType) -> Dtype {
    match w {
        WorkDType::Bf16 => Dtype::BF16,
        WorkDType::F16 => Dtype::F16,
        WorkDType::F32 => Dtype::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        for d in [
            DType::Bf16,
            DType::F16,
            DType::F32,
            DType::F64,
            DType::I64,
            DType::I32,
            DType::Bool,
            DType::U8,
        ] {
            assert_eq!(wire_dtype(storage_dtype(d).unwrap()), d);
        }
        assert_eq!(storage_dtype(DType::Unspecified), None);
        assert_eq!(wire_dtype(Dtype::I8), DType::Unspecified);
        for w in [WorkDType::Bf16, WorkDType::F16, WorkDType::F32] {
            assert_eq!(work_of_storage(storage_of_work(w)), Some(w));
            assert_eq!(storage_dtype(w.wire()), Some(storage_of_work(w)));
        }
        assert_eq!(work_of_storage(Dtype::F64), None);
    }
}
