//! Transfer protocol frames: arbitrary bytes, delivered in arbitrary slices, never panic the
//! frame decoder or the state machines, and every frame that decodes encodes back to the same
//! bytes. Manifest parts the receiver accepts are collected as its shell would (a temporary
//! file) and decoded once it says the manifest is complete.
#![no_main]

use freight_core::Manifest;
use freight_transport::protocol::{FrameDecoder, Message, Receiver, ReceiverEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new();
    let mut receiver = Receiver::new();
    let mut manifest = Vec::new();
    let step = 1 + split as usize;
    for slice in bytes.chunks(step) {
        dec.push(slice);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    let mut again = Vec::new();
                    msg.encode_into(&mut again);
                    let decoded = Message::decode_frame(&again[4..]).expect("re-encoded frame decodes");
                    assert_eq!(decoded, msg);
                    let mut events: std::collections::VecDeque<_> =
                        receiver.handle(msg).unwrap_or_default().into();
                    while let Some(ev) = events.pop_front() {
                        match ev {
                            ReceiverEvent::ManifestPart { data } => {
                                manifest.extend_from_slice(&data)
                            }
                            ReceiverEvent::ManifestComplete => {
                                let loaded = Manifest::decode(&manifest, "fuzz")
                                    .and_then(|m| freight_core::ManifestChunks::of(&m));
                                events.extend(receiver.manifest_loaded(loaded).unwrap_or_default());
                            }
                            _ => {}
                        }
                    }
                    while receiver.poll_transmit().is_some() {}
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
