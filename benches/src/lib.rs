//! What Remora's benchmarks share: reading a process's CPU time and memory.

pub mod procstat;
