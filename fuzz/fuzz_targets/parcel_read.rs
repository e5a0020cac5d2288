//! Any bytes read as a parcel stream: errors, never panics or runaway allocations.
#![no_main]
use freight_core::parcel::ParcelReader;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let r = Box::new(std::io::Cursor::new(data.to_vec()));
    if let Ok(mut p) = ParcelReader::from_reader(r, data.len() as u64, Path::new("fuzz")) {
        loop {
            match p.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = p.finish();
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
