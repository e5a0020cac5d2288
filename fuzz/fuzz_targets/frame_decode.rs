//! Transfer protocol frames: arbitrary bytes, delivered in arbitrary slices, never panic the
//! frame decoder or the state machines, and every frame that decodes encodes back to the same
//! bytes.
#![no_main]

use freight_transport::protocol::{FrameDecoder, Message, Receiver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new();
    let mut receiver = Receiver::new();
    let step = 1 + split as usize;
    let mut consumed = Vec::new();
    for slice in bytes.chunks(step) {
        dec.push(slice);
        consumed.extend_from_slice(slice);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    let mut again = Vec::new();
                    msg.encode_into(&mut again);
                    let decoded = Message::decode_frame(&again[4..]).expect("re-encoded frame decodes");
                    assert_eq!(decoded, msg);
                    let _ = receiver.handle(msg);
                    while receiver.poll_transmit().is_some() {}
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
