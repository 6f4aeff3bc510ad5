//! Writes the committed seed corpus: `corpus/<target>/seed-*`.
//!
//!     cargo run --manifest-path protocol/fuzz/Cargo.toml --example gen-seeds
//!
//! Every seed is valid input that reaches deep into its target (valid
//! encodings of every request and reply, multi-frame streams), and is run
//! through the target's check before it is written. Existing `seed-*` files of a target are
//! replaced; other corpus files (fuzzer finds, ignored by git) are kept.

use std::path::Path;

use gmem_fuzz::frames::frame_input;
use gmem_fuzz::requests::request_input;
use gmem_fuzz::seeds::{numbered, write_seeds};
use gmem_fuzz::{frames, replies, requests};
use gmem_protocol::wire::{
    encode_status_page, BindRequest, BindingStatus, CreateFlags, CreateRequest, DaemonStatus,
    DepositRequest, Features, FileInfo, FileRef, FileStatus, GuestAddress, HandoffReply,
    HandoffRequest, Header, Hello, HelloReply, LeaseId, LeaseStatus, MemoryKind, Name, OwnerStatus,
    Reply, Request, RequestBody, RestartNotice, RevokeReport, StatusQuery, StatusSection, VmId,
    VmSelector, VERSION,
};

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn lease(raw: u64) -> LeaseId {
    LeaseId::new(raw).expect("non-zero lease id")
}

fn requests() -> Vec<(&'static str, RequestBody)> {
    let vm = VmId::from_name(name("vm-a"));
    vec![
        (
            "hello-vm",
            RequestBody::Hello(Hello {
                features: Features::all(),
                vm: Some(vm.clone()),
            }),
        ),
        (
            "hello-control",
            RequestBody::Hello(Hello {
                features: Features::empty(),
                vm: None,
            }),
        ),
        (
            "create",
            RequestBody::Create(CreateRequest {
                name: name("ram0"),
                size: 1 << 30,
                kind: MemoryKind::Hugetlb2M,
                flags: CreateFlags::OPEN_EXISTING,
            }),
        ),
        ("open", RequestBody::Open(FileRef::own(name("ram0")))),
        (
            "bind",
            RequestBody::Bind(BindRequest::new(
                3,
                GuestAddress(0x1_0000_0000),
                name("ram0"),
                4096,
                8192,
            )),
        ),
        ("unbind", RequestBody::Unbind { slot: 7 }),
        (
            "deposit",
            RequestBody::Deposit(DepositRequest {
                name: name("gmem"),
                kind: MemoryKind::GuestMemfd,
            }),
        ),
        (
            "destroy",
            RequestBody::Destroy(FileRef::own(name("x.y:z-0"))),
        ),
        (
            "status-files",
            RequestBody::Status(StatusQuery {
                section: StatusSection::Files,
                start: 0,
            }),
        ),
        (
            "status-leases",
            RequestBody::Status(StatusQuery {
                section: StatusSection::Leases,
                start: 5,
            }),
        ),
        (
            "revoke-uuid",
            RequestBody::Revoke(VmSelector::Uuid(vm.uuid)),
        ),
        (
            "revoke-name",
            RequestBody::Revoke(VmSelector::Name(name("vm-b"))),
        ),
        ("scrub", RequestBody::Scrub(FileRef::own(name("ram0")))),
        ("handoff", RequestBody::Handoff(HandoffRequest { fd: 200 })),
        ("restart", RequestBody::Restart),
        (
            "status-daemon",
            RequestBody::Status(StatusQuery {
                section: StatusSection::Daemon,
                start: 0,
            }),
        ),
        (
            "open-vm-scoped",
            RequestBody::Open(FileRef::vm(VmSelector::Uuid(vm.uuid), name("ram0"))),
        ),
        (
            "destroy-operators",
            RequestBody::Destroy(FileRef::operators(name("spare"))),
        ),
        (
            "scrub-vm-named",
            RequestBody::Scrub(FileRef::vm(VmSelector::Name(name("vm-b")), name("ram0"))),
        ),
    ]
}

fn files() -> Vec<FileStatus> {
    let vm = VmId::from_name(name("vm-a"));
    vec![
        FileStatus {
            name: name("ram0"),
            size: 4 << 20,
            page_size: 2 << 20,
            kind: MemoryKind::Hugetlb2M,
            owner: Some(OwnerStatus {
                vm,
                lease: lease(3),
            }),
            bindings: vec![
                BindingStatus {
                    confirmed: false,
                    slot: 0,
                    gpa: GuestAddress(0),
                    offset: 0,
                    size: 2 << 20,
                },
                BindingStatus {
                    confirmed: false,
                    slot: 1,
                    gpa: GuestAddress(1 << 32),
                    offset: 2 << 20,
                    size: 2 << 20,
                },
            ],
        },
        FileStatus {
            name: name("spare"),
            size: 4096,
            page_size: 4096,
            kind: MemoryKind::Memfd,
            owner: None,
            bindings: Vec::new(),
        },
    ]
}

fn leases() -> Vec<LeaseStatus> {
    vec![LeaseStatus {
        lease: lease(3),
        vm: VmId::from_name(name("vm-a")),
        pid: 4242,
        uid: 1000,
        bindings: 2,
        files: 1,
    }]
}

fn replies() -> Vec<(&'static str, Vec<u8>)> {
    let (files_page, _) = encode_status_page(2, 0, &files(), FileStatus::encode);
    let (leases_page, _) = encode_status_page(1, 0, &leases(), LeaseStatus::encode);
    let file_info = FileInfo {
        size: 1 << 30,
        page_size: 2 << 20,
        kind: MemoryKind::Hugetlb2M,
        created: true,
    }
    .encode();
    let hello = HelloReply {
        features: Features::all(),
        lease: Some(lease(3)),
        version: VERSION,
    }
    .encode();
    let revoke = RevokeReport {
        leases: 1,
        bindings: 2,
        scrubbed: 1,
    }
    .encode();
    let handoff = HandoffReply { pid: 4242 }.encode();
    let daemon = DaemonStatus {
        pid: 4242,
        restarts: 2,
        born: 1_796_086_800,
        started: 1_796_093_920,
        files: 2,
        leases: 1,
        recovered: "recovered 2 files, 1 lease; journal tail cut at 4096".to_owned(),
    };
    let (daemon_page, _) = encode_status_page(1, 0, &[daemon], DaemonStatus::encode);
    let notice = RestartNotice {
        restarts: 2,
        pending: true,
    };
    vec![
        ("ok-empty", Reply::ok(Vec::new()).encode()),
        (
            "error-busy",
            Reply::error(16, "memory file ram0 is bound").encode(),
        ),
        // Text at the MAX_ERROR_TEXT limit, as Reply::error cuts it.
        (
            "error-longest-text",
            Reply::error(22, &"text ".repeat(60)).encode(),
        ),
        ("ok-file-info", Reply::ok(file_info.clone()).encode()),
        ("ok-hello", Reply::ok(hello.clone()).encode()),
        ("ok-revoke", Reply::ok(revoke.clone()).encode()),
        ("ok-files-page", Reply::ok(files_page.clone()).encode()),
        ("ok-leases-page", Reply::ok(leases_page.clone()).encode()),
        ("body-files-page", files_page),
        ("body-leases-page", leases_page),
        ("body-file-info", file_info),
        ("body-hello", hello),
        ("body-revoke", revoke),
        ("ok-handoff", Reply::ok(handoff.clone()).encode()),
        ("body-handoff", handoff),
        ("ok-restart-notice", notice.encode_payload()),
        ("ok-daemon-page", Reply::ok(daemon_page.clone()).encode()),
        ("body-daemon-page", daemon_page),
    ]
}

fn message(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn request_message(body: &RequestBody) -> Vec<u8> {
    let payload = body.encode();
    message(Header::request(body.request(), payload.len()), &payload)
}

fn frame_streams() -> Vec<(&'static str, Vec<u8>)> {
    let reqs: Vec<RequestBody> = requests().into_iter().map(|(_, r)| r).collect();
    let all: Vec<u8> = reqs.iter().flat_map(request_message).collect();
    let hello = request_message(&reqs[0]);
    let bind = request_message(&reqs[4]);
    let mut bad_version = Header::request(Request::Status, 8).to_bytes();
    bad_version[4] = 2;
    let mut oversized = Header::request(Request::Status, 8).to_bytes();
    oversized[8..12].copy_from_slice(&4097u32.to_le_bytes());
    let reply = message(Header::reply(8, 8), &Reply::ok(Vec::new()).encode());
    let mut truncated = bind.clone();
    truncated.truncate(40);
    let unknown = message(Header::request(Request::Status, 0), &[]);
    let mut unknown_code = unknown.clone();
    unknown_code[0] = 77;
    let notice = RestartNotice {
        restarts: 1,
        pending: false,
    }
    .encode_payload();
    let notice = message(Header::notice(notice.len()), &notice);
    let marker = message(
        Header {
            code: 0xffff_0000,
            is_reply: false,
            size: 0,
        },
        &[],
    );
    vec![
        ("hello-whole", frame_input(&[], &hello)),
        ("all-requests-bytewise", frame_input(&[1], &all)),
        (
            "all-requests-mixed",
            frame_input(&[5, 7, 12, 96, 256], &all),
        ),
        (
            "empty-payload-then-bind",
            frame_input(&[3], &[unknown.clone(), bind.clone()].concat()),
        ),
        (
            "truncated-payload",
            frame_input(&[13], &[hello.clone(), truncated].concat()),
        ),
        (
            "bad-version",
            frame_input(&[4], &[hello.clone(), bad_version.to_vec()].concat()),
        ),
        ("oversized", frame_input(&[], &oversized)),
        (
            "reply-and-unknown-code",
            frame_input(&[11, 2], &[reply, unknown_code].concat()),
        ),
        (
            "notice-marker-then-hello",
            frame_input(&[7, 30], &[notice, marker, hello].concat()),
        ),
    ]
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let reqs = numbered(requests().iter().map(|(l, r)| (*l, request_input(r))));
    write_seeds(
        &corpus.join("decode_request"),
        &reqs,
        requests::check_request,
    );

    write_seeds(
        &corpus.join("decode_reply"),
        &numbered(replies()),
        replies::check_reply,
    );

    write_seeds(
        &corpus.join("frame_reader"),
        &numbered(frame_streams()),
        frames::check_frames,
    );
}
