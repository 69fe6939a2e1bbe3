#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| remora_fuzz::authz(data));
