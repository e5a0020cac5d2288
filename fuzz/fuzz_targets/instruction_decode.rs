//! Any bytes given to the instruction decoders: an error or a value that re-encodes to them.
#![no_main]
use freight_core::instruction::{Instruction, SignedInstruction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = Instruction::decode(data) {
        assert_eq!(i.encode(), data, "decode accepted a non-canonical instruction");
    }
    if let Ok(s) = SignedInstruction::decode(data) {
        assert_eq!(s.encode(), data, "decode accepted a non-canonical signed instruction");
    }
});
