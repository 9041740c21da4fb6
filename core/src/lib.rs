//! Definitions shared by every gpuslice component.
pub mod units;
