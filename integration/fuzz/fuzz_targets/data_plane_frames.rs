#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| integration::fuzzing::frames(input));
