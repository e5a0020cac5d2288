//! The DP command decoder (`freight_appliance::dp::command`): arbitrary bytes on a command
//! stream never panic the JSON decoding of a request or a reply, and whatever decodes encodes
//! to bytes that decode to the same thing again.
#![no_main]

use freight_appliance::dp::command::{DpReply, DpRequest, decode_reply, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<DpRequest>(data) {
        let once = encode(&request);
        let again: DpRequest =
            serde_json::from_slice(&once).expect("an encoded request decodes");
        assert_eq!(encode(&again), once, "a request changed on the way round");
    }
    if let Ok(reply) = decode_reply(data) {
        let once = encode(&reply);
        let again: DpReply = decode_reply(&once).expect("an encoded reply decodes");
        assert_eq!(again, reply, "a reply changed on the way round");
        assert_eq!(encode(&again), once);
    }
});
