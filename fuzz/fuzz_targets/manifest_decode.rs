//! Any bytes given to the manifest decoder: an error or a manifest that re-encodes to them.
#![no_main]
use freight_core::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data, "fuzz") {
        assert_eq!(m.encode(), data, "decode accepted a non-canonical encoding");
    }
});
