//! What Remora's benchmarks share: running the load generators, reading a process's CPU time
//! and memory.

pub mod load;
pub mod nginx;
pub mod procstat;
