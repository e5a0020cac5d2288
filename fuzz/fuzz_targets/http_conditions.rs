//! The DP content server's request header logic (`freight_appliance::dp::http`): arbitrary
//! `Range`, `If-Match`, `If-None-Match`, `If-Range`, `If-Modified-Since` and
//! `If-Unmodified-Since` values never panic, a range that is served lies inside the file and
//! its chunk plan covers exactly its bytes, and the preconditions keep RFC 9110's rules.
#![no_main]

use freight_appliance::dp::http::{
    Precondition, RangeReq, etag, if_range_allows, parse_range, plan, preconditions,
};
use freight_core::ChunkId;
use freight_core::manifest::ChunkRef;
use http::{HeaderMap, HeaderValue, Method, header};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    // A file of up to 255 chunks of up to 64 KiB (or any size, for the range alone).
    let size_seed = u64::from_le_bytes(head[..8].try_into().unwrap());
    let chunk_len = 1 + (size_seed % 65_536) as u32;
    let chunks: Vec<ChunkRef> = (0..head[8])
        .map(|i| ChunkRef {
            id: ChunkId([i; 32]),
            len: chunk_len,
        })
        .collect();
    let planned: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    let mut fields = rest.split(|&b| b == b'\n');

    // Range, against the planned file and against the raw size.
    let range = fields.next().unwrap_or_default();
    if let Ok(text) = std::str::from_utf8(range) {
        for size in [planned, size_seed] {
            match parse_range(text, size) {
                RangeReq::Part { start, end } => assert!(start <= end && end < size, "{text}"),
                RangeReq::Whole | RangeReq::Unsatisfiable => {}
            }
        }
        if let RangeReq::Part { start, end } = parse_range(text, planned) {
            let pieces = plan(&chunks, start, end);
            let total: u64 = pieces.iter().map(|p| u64::from(p.take)).sum();
            assert_eq!(total, end - start + 1, "{text}");
            assert!(pieces.iter().all(|p| p.take > 0 && p.skip + p.take <= chunk_len));
        }
    }

    // The conditional headers, each from one line of the input.
    let names = [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_RANGE,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ];
    let mut headers = HeaderMap::new();
    for (name, value) in names.iter().zip(fields) {
        if value.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name.clone(), v);
        }
    }
    let tag = etag(planned, &chunks);
    let modified = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(size_seed >> 30));
    let get = preconditions(&Method::GET, &headers, &tag, modified);
    let put = preconditions(&Method::PUT, &headers, &tag, modified);
    assert_ne!(put, Precondition::NotModified, "304 is for GET and HEAD only");
    if get == Precondition::Failed {
        // If-Match and If-Unmodified-Since do not depend on the method.
        assert_eq!(put, Precondition::Failed);
    }
    if !headers.contains_key(header::IF_MATCH)
        && !headers.contains_key(header::IF_NONE_MATCH)
        && !headers.contains_key(header::IF_MODIFIED_SINCE)
        && !headers.contains_key(header::IF_UNMODIFIED_SINCE)
    {
        assert_eq!(get, Precondition::Proceed);
    }
    // The file's own tag always satisfies If-Match and If-Range.
    let mut own = HeaderMap::new();
    own.insert(header::IF_MATCH, HeaderValue::from_str(&tag).unwrap());
    own.insert(header::IF_RANGE, HeaderValue::from_str(&tag).unwrap());
    assert_eq!(preconditions(&Method::GET, &own, &tag, modified), Precondition::Proceed);
    assert!(if_range_allows(&own, &tag));
    let _ = if_range_allows(&headers, &tag);
});
