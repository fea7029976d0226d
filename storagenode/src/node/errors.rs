//! Engine errors as the data plane reports them.

use vbs_wire::proto::{ErrorCode, WireError};

use crate::engine::EngineError;

pub fn from_engine(error: EngineError) -> WireError {
    let code = match &error {
        EngineError::OutOfRange { .. } => ErrorCode::OutOfRange,
        EngineError::StaleGeneration { current, .. } => {
            let current = current.0;
            return WireError::new(ErrorCode::StaleGeneration, error.to_string())
                .with_detail(current);
        }
        EngineError::Hole { expected, .. } => {
            let expected = expected.0;
            return WireError::new(ErrorCode::Hole, error.to_string()).with_detail(expected);
        }
        EngineError::Damaged { lba, .. } => {
            let lba = lba.map_or(0, |l| l.0);
            return WireError::new(ErrorCode::Damaged, error.to_string()).with_detail(lba);
        }
        EngineError::Conflict { .. } | EngineError::ContentMismatch { .. } => ErrorCode::Conflict,
        EngineError::TruncateStable { .. } | EngineError::Truncated { .. } => ErrorCode::Conflict,
        EngineError::Invalid(_) => ErrorCode::BadRequest,
        EngineError::NoSuchUnit(_) => ErrorCode::UnknownUnit,
        EngineError::UnitExists(_) => ErrorCode::Internal,
        EngineError::NoSpace { .. } => ErrorCode::NoSpace,
        EngineError::Io { source, .. } | EngineError::Device { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull =>
        {
            ErrorCode::NoSpace
        }
        EngineError::Io { .. }
        | EngineError::Device { .. }
        | EngineError::Corrupt { .. }
        | EngineError::CorruptLog { .. }
        | EngineError::Failed { .. } => ErrorCode::Internal,
    };
    WireError::new(code, error.to_string())
}

/// A blocking engine call that panicked or was cancelled.
pub fn from_join(error: tokio::task::JoinError) -> WireError {
    WireError::new(ErrorCode::Internal, format!("storage task failed: {error}"))
}
