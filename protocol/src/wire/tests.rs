//! Round trips and refusals of the wire format.

use super::*;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn sample_requests() -> Vec<RequestBody> {
    let vm = VmId::from_name(name("vm-a"));
    vec![
        RequestBody::Hello(Hello {
            features: Features::all(),
            vm: Some(vm.clone()),
        }),
        RequestBody::Hello(Hello {
            features: Features::empty(),
            vm: None,
        }),
        RequestBody::Create(CreateRequest {
            name: name("ram0"),
            size: 1 << 30,
            kind: MemoryKind::Hugetlb2M,
            flags: CreateFlags::OPEN_EXISTING,
        }),
        RequestBody::Open(FileRef::own(name("ram0"))),
        RequestBody::Open(FileRef::vm(VmSelector::Name(name("vm-a")), name("ram0"))),
        RequestBody::Open(FileRef::operators(name("pool-0"))),
        RequestBody::Bind(BindRequest::new(
            3,
            GuestAddress(0x1_0000_0000),
            name("ram0"),
            4096,
            8192,
        )),
        RequestBody::Unbind { slot: 7 },
        RequestBody::Deposit(DepositRequest {
            name: name("gmem"),
            kind: MemoryKind::GuestMemfd,
        }),
        RequestBody::Destroy(FileRef::own(name("x"))),
        RequestBody::Destroy(FileRef::vm(VmSelector::Uuid(vm.uuid), name("x"))),
        RequestBody::Status(StatusQuery {
            section: StatusSection::Leases,
            start: 5,
        }),
        RequestBody::Revoke(VmSelector::Uuid(vm.uuid)),
        RequestBody::Revoke(VmSelector::Name(name("vm-b"))),
        RequestBody::Scrub(FileRef::own(name("ram0"))),
        RequestBody::Scrub(FileRef::operators(name("ram0"))),
        RequestBody::Handoff(HandoffRequest { fd: 200 }),
        RequestBody::Transfer(TransferRequest {
            from: FileRef::vm(VmSelector::Name(name("vm-a")), name("ram0")),
            to: FileRef::vm(VmSelector::Uuid(vm.uuid), name("ram1")),
        }),
        RequestBody::Transfer(TransferRequest {
            from: FileRef::operators(name("pool-0")),
            to: FileRef::vm(VmSelector::Name(name("vm-b")), name("ram")),
        }),
        RequestBody::Forget(VmSelector::Name(name("vm-b"))),
        RequestBody::Restart,
        RequestBody::Status(StatusQuery {
            section: StatusSection::Daemon,
            start: 0,
        }),
    ]
}

#[test]
fn every_request_round_trips() {
    for req in sample_requests() {
        let bytes = req.encode();
        let scoped = req.request().has_scoped_form() && bytes.len() == RawScopedName::SIZE;
        assert!(
            scoped || bytes.len() == req.request().request_len(),
            "{req:?}"
        );
        let back = RequestBody::decode(req.request().code(), &bytes).unwrap();
        assert_eq!(back, req);
    }
}

#[test]
fn header_round_trips_and_rejects_bad_fields() {
    let h = Header::request(Request::Bind, 96);
    assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
    let r = Header::reply(99, 8);
    assert_eq!(Header::from_bytes(&r.to_bytes()).unwrap(), r);

    let mut bad = h.to_bytes();
    bad[4] = 2; // version 2
    assert_eq!(Header::from_bytes(&bad), Err(WireError::BadVersion(2)));
    let mut bad = h.to_bytes();
    bad[4] |= 0x10;
    assert_eq!(
        Header::from_bytes(&bad),
        Err(WireError::ReservedFlags(0x10))
    );
    let mut bad = h.to_bytes();
    bad[8..12].copy_from_slice(&4097u32.to_le_bytes());
    assert!(matches!(
        Header::from_bytes(&bad),
        Err(WireError::Oversized { size: 4097, .. })
    ));
}

#[test]
fn header_bytes_are_little_endian() {
    let h = Header::request(Request::Status, 8).to_bytes();
    assert_eq!(h, [8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
}

#[test]
fn unknown_code_and_wrong_lengths_are_errors() {
    assert_eq!(
        RequestBody::decode(0, &[]),
        Err(WireError::UnknownRequest(0))
    );
    let past_last = Request::ALL.last().unwrap().code() + 1;
    assert_eq!(
        RequestBody::decode(past_last, &[]),
        Err(WireError::UnknownRequest(past_last))
    );
    for req in Request::ALL {
        let len = req.request_len();
        let bad_lengths = [Some(0), len.checked_sub(1), Some(len + 1)];
        for bad in bad_lengths.into_iter().flatten().filter(|&bad| bad != len) {
            let err = RequestBody::decode(req.code(), &vec![0; bad]).unwrap_err();
            assert!(matches!(err, WireError::BadLength { .. }), "{req} {bad}");
        }
    }
}

#[test]
fn names_are_validated() {
    assert!(Name::new("ram-0.vm_1:a").is_ok());
    for bad in ["", ".hidden", "a/b", "sp ace", "é", &"x".repeat(64)] {
        assert!(Name::new(bad).is_err(), "{bad:?}");
    }
    let mut field = name("abc").to_field();
    field[10] = b'x'; // garbage after the NUL
    assert!(Name::from_field(&field, "n").is_err());
    let full = [b'a'; NAME_LEN];
    assert!(Name::from_field(&full, "n").is_err());
    assert_eq!(Name::from_optional_field(&[0; NAME_LEN], "n"), Ok(None));
}

#[test]
fn payload_flags_and_padding_are_checked() {
    let mut bind =
        RequestBody::Bind(BindRequest::new(0, GuestAddress(0), name("f"), 0, 4096)).encode();
    bind[4] = 1;
    assert!(matches!(
        RequestBody::decode(Request::Bind.code(), &bind),
        Err(WireError::NonZeroPadding(_))
    ));
    let mut create = RequestBody::Create(CreateRequest {
        name: name("f"),
        size: 4096,
        kind: MemoryKind::Memfd,
        flags: CreateFlags::empty(),
    })
    .encode();
    create[12] = 0x80;
    assert!(matches!(
        RequestBody::decode(Request::Create.code(), &create),
        Err(WireError::UnknownFlags { .. })
    ));
    create[12] = 0;
    create[8] = 9; // kind 9
    assert!(matches!(
        RequestBody::decode(Request::Create.code(), &create),
        Err(WireError::UnknownValue { field: "kind", .. })
    ));
}

#[test]
fn hello_rules() {
    // A VM hello needs a non-nil UUID.
    let mut raw = RawHello {
        name: name("vm").to_field(),
        ..Default::default()
    };
    assert!(RequestBody::decode(1, raw.as_slice()).is_err());
    // A control hello must not carry an identity.
    raw.flags = HelloFlags::CONTROL.bits().into();
    assert!(RequestBody::decode(1, raw.as_slice()).is_err());
    raw.name = [0; NAME_LEN];
    assert!(RequestBody::decode(1, raw.as_slice()).is_ok());
    // Unknown feature bits are masked.
    raw.features = u64::MAX.into();
    match RequestBody::decode(1, raw.as_slice()).unwrap() {
        RequestBody::Hello(h) => assert_eq!(h.features, Features::all()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replies_round_trip_and_reject_malformed() {
    let ok = Reply::ok(vec![1, 2, 3]);
    assert_eq!(Reply::decode(&ok.encode()).unwrap(), ok);
    let err = Reply::error(16, "busy");
    assert_eq!(err.status, -16);
    assert_eq!(Reply::decode(&err.encode()).unwrap(), err);
    let long = Reply::error(22, &"é".repeat(300));
    assert!(long.text.len() <= MAX_ERROR_TEXT);

    assert!(Reply::decode(&[0; 4]).is_err());
    let mut bad = err.encode();
    bad.push(0); // body after an error
    assert!(Reply::decode(&bad).is_err());
    let mut bad = ok.encode();
    bad[4] = 1; // text on success
    assert!(Reply::decode(&bad).is_err());
    let mut bad = ok.encode();
    bad[0] = 1; // positive status
    assert!(Reply::decode(&bad).is_err());
}

#[test]
fn error_text_must_be_utf8_and_present() {
    // Found by cargo fuzz: lossy decoding turned 86 invalid bytes into 258.
    let mut bad = vec![0xff, 0xff, 0xff, 0xff, 86, 0, 0, 0];
    bad.extend_from_slice(&[0xff; 86]);
    assert_eq!(
        Reply::decode(&bad),
        Err(WireError::BadReply("error text is not UTF-8"))
    );
    let empty = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    assert_eq!(
        Reply::decode(&empty),
        Err(WireError::BadReply("error without text"))
    );
    let ok = Reply::error(5, "é".repeat(200).as_str());
    assert_eq!(Reply::decode(&ok.encode()).unwrap(), ok);
}

#[test]
fn status_pages_round_trip_and_fit() {
    let vm = VmId::from_name(name("vm"));
    let files: Vec<FileStatus> = (0..100)
        .map(|i| FileStatus {
            name: name(&format!("f{i}")),
            size: 1 << 20,
            page_size: 4096,
            kind: MemoryKind::Memfd,
            owner: Some(OwnerStatus {
                vm: vm.clone(),
                lease: LeaseId::new(4).unwrap(),
            }),
            bindings: vec![BindingStatus {
                confirmed: false,
                slot: i,
                gpa: GuestAddress(0),
                offset: 0,
                size: 4096,
            }],
        })
        .collect();
    let (body, count) = encode_status_page(100, 0, &files, FileStatus::encode);
    assert!(body.len() + RawReplyHead::SIZE <= MAX_PAYLOAD);
    assert!(count > 0 && count < 100);
    let page = FileStatus::decode_page(&body).unwrap();
    assert_eq!(page.entries.len(), count as usize);
    assert_eq!(page.entries[..], files[..count as usize]);
    assert_eq!(page.next, count);

    let lease = LeaseStatus {
        lease: LeaseId::new(9).unwrap(),
        vm,
        pid: 42,
        uid: 0,
        bindings: 1,
        files: 2,
    };
    // A start past the end: an empty page whose cursor is the end.
    let (body, count) = encode_status_page(3, 9, &files[..0], FileStatus::encode);
    assert_eq!(count, 0);
    let page = FileStatus::decode_page(&body).unwrap();
    assert_eq!((page.total, page.next), (3, 3));

    let (body, count) = encode_status_page(1, 0, std::slice::from_ref(&lease), LeaseStatus::encode);
    assert_eq!(count, 1);
    assert_eq!(
        LeaseStatus::decode_page(&body).unwrap().entries,
        vec![lease]
    );
    assert!(LeaseStatus::decode_page(&body[..body.len() - 1]).is_err());
}

#[test]
fn uuid_text_and_name_derivation() {
    let u = Uuid::from_name("vm-a");
    assert_eq!(u, Uuid::from_name("vm-a"));
    assert_ne!(u, Uuid::from_name("vm-b"));
    assert_eq!(Uuid::parse(&u.to_string()), Some(u));
    assert_eq!(Uuid::parse("nope"), None);
    assert!(!u.is_nil());
}

#[test]
fn restart_notice_round_trips_and_is_checked() {
    for notice in [
        RestartNotice {
            restarts: 1,
            pending: false,
        },
        RestartNotice {
            restarts: u32::MAX,
            pending: true,
        },
    ] {
        let body = notice.encode();
        assert_eq!(body.len(), RawRestartNotice::SIZE);
        assert_eq!(RestartNotice::decode(&body), Ok(notice));
        let payload = notice.encode_payload();
        assert_eq!(payload.len(), RawReplyHead::SIZE + RawRestartNotice::SIZE);
        assert_eq!(RestartNotice::decode_payload(&payload), Ok(notice));
    }
    let header = Header::notice(16);
    assert!(header.is_notice());
    assert_eq!(header.to_bytes(), [0, 0, 0, 0, 5, 0, 0, 0, 16, 0, 0, 0]);
    assert!(!Header::reply(8, 16).is_notice());
    assert!(!Header {
        is_reply: false,
        ..header
    }
    .is_notice());
    // Byte layout: restarts 3, pending 1.
    let body = RestartNotice {
        restarts: 3,
        pending: true,
    }
    .encode();
    assert_eq!(body, [3, 0, 0, 0, 1, 0, 0, 0]);

    let mut bad = body.clone();
    bad[4] = 2;
    assert_eq!(
        RestartNotice::decode(&bad),
        Err(WireError::UnknownValue {
            field: "notice pending",
            value: 2
        })
    );
    assert!(RestartNotice::decode(&body[..7]).is_err());
    assert!(RestartNotice::decode_payload(&Reply::error(5, "x").encode()).is_err());
    assert!(RestartNotice::decode_payload(&Reply::ok(vec![0; 9]).encode()).is_err());
}

#[test]
fn notice_and_marker_codes_are_never_requests() {
    assert!(RequestBody::decode(NOTICE_CODE, &[]).is_err());
    for req in Request::ALL {
        assert_ne!(req.code(), NOTICE_CODE);
        assert!(!MARKER_CODES.contains(&req.code()));
    }
    for code in [*MARKER_CODES.start(), *MARKER_CODES.end()] {
        assert_eq!(
            RequestBody::decode(code, &[]),
            Err(WireError::UnknownRequest(code))
        );
    }
}

#[test]
fn restart_has_an_empty_payload_and_its_own_feature() {
    assert_eq!(Request::Restart.code(), 14);
    assert_eq!(Request::Restart.name(), "RESTART");
    assert_eq!(Request::Restart.request_len(), 0);
    assert_eq!(
        (Request::Restart.request_fds(), Request::Restart.reply_fds()),
        (0, 0)
    );
    assert!(RequestBody::Restart.encode().is_empty());
    assert_eq!(RequestBody::decode(14, &[]), Ok(RequestBody::Restart));
    assert_eq!(
        RequestBody::decode(14, &[0]),
        Err(WireError::BadLength {
            request: Request::Restart,
            expected: 0,
            actual: 1
        })
    );
    assert_eq!(Features::RESTART.bits(), 0x20);
    assert_eq!(Features::all().bits(), 0xff);
    assert_eq!(StatusSection::try_from(3), Ok(StatusSection::Daemon));
    assert_eq!(StatusSection::Daemon.name(), "daemon");
}

fn daemon(recovered: &str) -> DaemonStatus {
    DaemonStatus {
        pid: 1234,
        restarts: 3,
        born: 1_796_000_000,
        started: 1_796_007_000,
        files: 10_000,
        leases: 1_000,
        recovered: recovered.to_owned(),
    }
}

#[test]
fn daemon_status_round_trips_with_its_text_padded() {
    for text in [
        "",
        "a",
        "1234567",
        "12345678",
        "é: 2 files, 1 lease",
        &"x".repeat(1024),
    ] {
        let status = daemon(text);
        let entry = status.encode();
        assert_eq!(entry.len(), status.encoded_len());
        assert_eq!(entry.len() % 8, 0, "{text:?}");
        assert_eq!(
            entry.len(),
            RawDaemonStatus::SIZE + text.len().div_ceil(8) * 8
        );
        assert!(entry[RawDaemonStatus::SIZE + text.len()..]
            .iter()
            .all(|&b| b == 0));
        let (body, count) =
            encode_status_page(1, 0, std::slice::from_ref(&status), DaemonStatus::encode);
        assert_eq!(count, 1);
        let page = DaemonStatus::decode_page(&body).unwrap();
        assert_eq!((page.total, page.next), (1, 1));
        assert_eq!(page.entries, vec![status]);
    }
    // Byte layout: the documented offsets (PROTOCOL.md §9).
    let entry = daemon("ok").encode();
    assert_eq!(entry[0..4], 1234u32.to_le_bytes());
    assert_eq!(entry[4..8], 3u32.to_le_bytes());
    assert_eq!(entry[8..16], 1_796_000_000u64.to_le_bytes());
    assert_eq!(entry[16..24], 1_796_007_000u64.to_le_bytes());
    assert_eq!(entry[24..28], 10_000u32.to_le_bytes());
    assert_eq!(entry[28..32], 1_000u32.to_le_bytes());
    assert_eq!(entry[32..36], 2u32.to_le_bytes());
    assert_eq!(entry[36..40], [0; 4]);
    assert_eq!(&entry[40..], b"ok\0\0\0\0\0\0");
    // A start past the one entry: an empty page.
    let (body, count) = encode_status_page(1, 1, &[] as &[DaemonStatus], DaemonStatus::encode);
    assert_eq!(count, 0);
    let page = DaemonStatus::decode_page(&body).unwrap();
    assert_eq!((page.total, page.next, page.entries.len()), (1, 1, 0));
}

#[test]
fn daemon_status_text_is_cut_at_a_char_boundary() {
    // 1023 bytes of ASCII then a 2-byte character: the character goes.
    let long = format!("{}é and more", "x".repeat(1023));
    let status = daemon(&long);
    assert_eq!(status.recovered_on_wire().len(), 1023);
    let (body, _) = encode_status_page(1, 0, std::slice::from_ref(&status), DaemonStatus::encode);
    let back = DaemonStatus::decode_page(&body).unwrap().entries.remove(0);
    assert_eq!(back.recovered, "x".repeat(1023));
    assert_eq!(
        daemon(&"é".repeat(600)).recovered_on_wire().len(),
        MAX_RECOVERED_TEXT
    );
}

#[test]
fn malformed_daemon_pages_are_refused() {
    let (body, _) = encode_status_page(1, 0, &[daemon("abc")], DaemonStatus::encode);
    let text_at = RawStatusPage::SIZE + RawDaemonStatus::SIZE;
    let len_at = RawStatusPage::SIZE + 32;
    // Truncated anywhere: in the head, the text or the padding.
    for cut in [RawStatusPage::SIZE + 10, text_at + 2, body.len() - 1] {
        assert!(DaemonStatus::decode_page(&body[..cut]).is_err(), "{cut}");
    }
    let mut trailing = body.clone();
    trailing.extend_from_slice(&[0; 8]);
    assert!(DaemonStatus::decode_page(&trailing).is_err());
    let mut bad_utf8 = body.clone();
    bad_utf8[text_at] = 0xff;
    assert_eq!(
        DaemonStatus::decode_page(&bad_utf8),
        Err(WireError::BadReply("daemon recovery text is not UTF-8"))
    );
    let mut too_long = body.clone();
    too_long[len_at..len_at + 4].copy_from_slice(&1025u32.to_le_bytes());
    assert_eq!(
        DaemonStatus::decode_page(&too_long),
        Err(WireError::BadReply("daemon recovery text too long"))
    );
    // The text's length decides where the padding ends.
    let mut longer = body;
    longer[len_at..len_at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(DaemonStatus::decode_page(&longer).is_err());
}
