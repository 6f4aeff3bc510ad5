//! `decode_reply`: every reply decoder on the raw input, and on the body of
//! the input when it decodes as a reply.
//!
//! Reply decoders are lenient about padding (the client reads what the
//! daemon wrote), so the property is `decode(encode(x)) == x`, not that the
//! input was canonical.

use gmem_protocol::wire::{
    DaemonStatus, FileInfo, FileStatus, HandoffReply, HelloReply, LeaseStatus, Reply,
    RestartNotice, RevokeReport, StatusPage, MAX_ERROR_TEXT, MAX_RECOVERED_TEXT,
};

/// Runs every property of the `decode_reply` target on `data`.
pub fn check_reply(data: &[u8]) {
    if let Ok(notice) = RestartNotice::decode_payload(data) {
        // The notice's payload has no padding: canonical bytes only.
        assert_eq!(notice.encode_payload(), data, "notice not canonical");
    }
    if let Ok(reply) = Reply::decode(data) {
        check_reply_round_trip(data, &reply);
        check_bodies(&reply.body);
    }
    check_bodies(data);
}

fn check_reply_round_trip(data: &[u8], reply: &Reply) {
    assert!(
        reply.status <= 0,
        "positive status {} accepted",
        reply.status
    );
    if reply.status == 0 {
        assert!(reply.text.is_empty(), "success with error text");
    } else {
        assert!(reply.body.is_empty(), "error with a body");
    }
    let encoded = reply.encode();
    let again = Reply::decode(&encoded);
    assert_eq!(
        again.as_ref(),
        Ok(reply),
        "reply does not round-trip (text of {} bytes, limit {MAX_ERROR_TEXT})",
        reply.text.len()
    );
    // Nothing in the reply head is padding: a valid UTF-8 reply re-encodes
    // to the very same bytes.
    let text_len = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    if std::str::from_utf8(&data[8..8 + text_len]).is_ok() {
        assert_eq!(encoded, data, "reply encoding not canonical");
    }
}

fn check_bodies(body: &[u8]) {
    if let Ok(page) = FileStatus::decode_page(body) {
        let again = FileStatus::decode_page(&encode_page(&page, FileStatus::encode));
        assert_eq!(again.as_ref(), Ok(&page), "files page does not round-trip");
        for entry in &page.entries {
            assert_eq!(entry.encoded_len(), entry.encode().len());
        }
    }
    if let Ok(page) = LeaseStatus::decode_page(body) {
        let again = LeaseStatus::decode_page(&encode_page(&page, LeaseStatus::encode));
        assert_eq!(again.as_ref(), Ok(&page), "leases page does not round-trip");
    }
    if let Ok(page) = DaemonStatus::decode_page(body) {
        let again = DaemonStatus::decode_page(&encode_page(&page, DaemonStatus::encode));
        assert_eq!(again.as_ref(), Ok(&page), "daemon page does not round-trip");
        for entry in &page.entries {
            assert!(entry.recovered.len() <= MAX_RECOVERED_TEXT);
            assert_eq!(entry.encoded_len(), entry.encode().len());
        }
    }
    if let Ok(info) = FileInfo::decode(body) {
        assert_eq!(FileInfo::decode(&info.encode()), Ok(info));
    }
    if let Ok(hello) = HelloReply::decode(body) {
        assert_eq!(HelloReply::decode(&hello.encode()), Ok(hello));
    }
    if let Ok(handoff) = HandoffReply::decode(body) {
        assert_eq!(HandoffReply::decode(&handoff.encode()), Ok(handoff));
    }
    if let Ok(notice) = RestartNotice::decode(body) {
        assert_eq!(notice.encode(), body, "notice body not canonical");
    }
    if let Ok(report) = RevokeReport::decode(body) {
        assert_eq!(RevokeReport::decode(&report.encode()), Ok(report));
    }
}

/// Re-encodes a decoded page with its own cursor (encode_status_page derives
/// `next` from `start` and would also stop at the payload budget).
fn encode_page<T>(page: &StatusPage<T>, encode: impl Fn(&T) -> Vec<u8>) -> Vec<u8> {
    let count = u32::try_from(page.entries.len()).expect("entries of one page");
    let mut out = Vec::new();
    for field in [page.total, count, page.next, 0] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    for entry in &page.entries {
        out.extend_from_slice(&encode(entry));
    }
    out
}
