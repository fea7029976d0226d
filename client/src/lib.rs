//! The vbs client library and the wire types every vbs crate shares.
//!
//! # Layout
//! - [`types`]: newtypes for VBAs, LBAs, generations, ids (`Vba`, `Lba`, `Generation`, `UnitId`, ...).
//! - [`size`]: parsing and printing of human sizes (`4k`, `64M`, `1G`) and durations.

pub mod size;
pub mod types;
