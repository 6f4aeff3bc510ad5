//! Writes the committed seed corpus: `corpus/<target>/seed-*`.
//!
//!     cargo run --manifest-path protocol/fuzz/Cargo.toml --example gen-seeds
//!
//! Every seed is valid input that reaches deep into its target (valid
//! encodings of every request and reply, multi-frame streams, ledger
//! scenarios whose operations succeed), and is run through the target's
//! check before it is written. Existing `seed-*` files of a target are
//! replaced; other corpus files (fuzzer finds, ignored by git) are kept.

use std::fs;
use std::path::Path;

use gmem_fuzz::frames::frame_input;
use gmem_fuzz::ledger_ops::{self, Harness, Op};
use gmem_fuzz::requests::request_input;
use gmem_fuzz::{frames, replies, requests};
use gmem_protocol::wire::{
    encode_status_page, BindRequest, BindingStatus, CreateFlags, CreateRequest, DepositRequest,
    Features, FileInfo, FileStatus, Header, Hello, HelloReply, LeaseStatus, MemoryKind, Name,
    OwnerStatus, Reply, Request, RequestBody, RevokeReport, StatusQuery, StatusSection, VmId,
    VmSelector, MAX_BINDINGS_PER_FILE, VERSION,
};

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
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
        ("open", RequestBody::Open(name("ram0"))),
        (
            "bind",
            RequestBody::Bind(BindRequest {
                slot: 3,
                gpa: 0x1_0000_0000,
                name: name("ram0"),
                offset: 4096,
                size: 8192,
            }),
        ),
        ("unbind", RequestBody::Unbind { slot: 7 }),
        (
            "deposit",
            RequestBody::Deposit(DepositRequest {
                name: name("gmem"),
                kind: MemoryKind::GuestMemfd,
            }),
        ),
        ("destroy", RequestBody::Destroy(name("x.y:z-0"))),
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
        ("scrub", RequestBody::Scrub(name("ram0"))),
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
            owner: Some(OwnerStatus { vm, lease: 3 }),
            bindings: vec![
                BindingStatus {
                    slot: 0,
                    gpa: 0,
                    offset: 0,
                    size: 2 << 20,
                },
                BindingStatus {
                    slot: 1,
                    gpa: 1 << 32,
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
        lease: 3,
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
        lease: 3,
        version: VERSION,
    }
    .encode();
    let revoke = RevokeReport {
        leases: 1,
        bindings: 2,
        scrubbed: 1,
    }
    .encode();
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
    ]
}

fn ledger_scenarios() -> Vec<(&'static str, Vec<Op>)> {
    // Units for Bind: 0 = the file's page size, 1 = 4 KiB.
    let bind = |lease, slot, gpa, file, offset, size| Op::Bind {
        lease,
        slot,
        gpa,
        file,
        offset,
        size,
        unit: 0,
    };
    let setup = vec![
        Op::AddFile {
            file: 0,
            kind: 0,
            pages: 16,
            creator: 0,
        },
        Op::AddFile {
            file: 1,
            kind: 0,
            pages: 4,
            creator: 0,
        },
        Op::OpenLease { vm: 0, pid: 10 },
        Op::OpenLease { vm: 1, pid: 11 },
    ];
    let with = |ops: &[Op]| [setup.as_slice(), ops].concat();
    vec![
        (
            "bind-unbind-close",
            with(&[
                bind(0, 0, 0, 0, 0, 4),
                bind(0, 1, 8, 0, 4, 4),
                bind(1, 0, 0, 1, 0, 2),
                Op::Unbind { lease: 0, slot: 0 },
                Op::CloseLease { lease: 0 },
                bind(0, 2, 16, 0, 8, 4),
            ]),
        ),
        (
            "refusals",
            with(&[
                bind(0, 0, 0, 0, 0, 4),
                bind(1, 0, 0, 0, 8, 4),           // other VM: NotOwner
                bind(0, 0, 8, 0, 8, 4),           // slot taken
                bind(0, 1, 2, 0, 8, 4),           // guest overlap
                bind(0, 1, 8, 0, 2, 4),           // file range overlap
                bind(0, 1, 8, 0, 14, 5),          // past the end
                Op::OpenLease { vm: 0, pid: 12 }, // VM busy
                Op::RemoveFile {
                    file: 0,
                    operator: 0,
                }, // bound
            ]),
        ),
        (
            "holders",
            with(&[
                Op::AddHolder {
                    file: 0,
                    pid: 3,
                    vm: 0,
                },
                Op::SetAlive { mask: 0b1000 },
                bind(1, 0, 0, 0, 0, 1), // held by a live pid of VM 0
                bind(0, 0, 0, 0, 0, 1),
                Op::Unbind { lease: 0, slot: 0 },
                Op::PruneHolders,
                Op::ClearHolders { file: 0 },
                bind(1, 0, 0, 0, 0, 1),
            ]),
        ),
        (
            "operator-remove",
            with(&[
                bind(0, 0, 0, 0, 0, 2),
                bind(0, 1, 4, 1, 0, 2),
                Op::RemoveFile {
                    file: 0,
                    operator: 1,
                },
                Op::AddFile {
                    file: 0,
                    kind: 0,
                    pages: 2,
                    creator: 0x80,
                },
                bind(0, 0, 0, 0, 0, 2),
                Op::CloseLease { lease: 0 },
            ]),
        ),
        (
            "hugetlb-and-overflow",
            vec![
                Op::AddFile {
                    file: 2,
                    kind: 1,
                    pages: 4,
                    creator: 0,
                },
                Op::OpenLease { vm: 2, pid: 1 },
                bind(0, 0, 0, 2, 0, 2),
                Op::Bind {
                    lease: 0,
                    slot: 1,
                    gpa: 1,
                    file: 2,
                    offset: 2,
                    size: 1,
                    unit: 1, // 4 KiB units: misaligned for 2 MiB pages
                },
                Op::Bind {
                    lease: 0,
                    slot: 1,
                    gpa: 1,
                    file: 2,
                    offset: 2,
                    size: 1,
                    unit: 4, // gpa near 2^64: overflow
                },
                Op::CloseLease { lease: 0 },
            ],
        ),
        (
            "lease-of-names",
            vec![
                Op::OpenLease { vm: 0, pid: 1 },
                Op::OpenLease { vm: 145, pid: 2 }, // uuid v1, name v0
                Op::LeaseOf { vm: 0 },             // name v0: ambiguous
                Op::LeaseOf { vm: 1 },             // uuid v1 found, name v1 unknown
                Op::CloseLease { lease: 0 },
                Op::LeaseOf { vm: 0 },
            ],
        ),
        ("binding-limit", binding_limit()),
        (
            "renamed-vm-lease-churn",
            with(&[
                Op::CloseLease { lease: 0 },
                Op::OpenLease { vm: 6 * 3, pid: 20 }, // uuid v0, name v3
                bind(1, 0, 0, 0, 0, 1),
                Op::CloseLease { lease: 0xff }, // unknown lease
                Op::Unbind { lease: 1, slot: 5 },
                Op::CloseLease { lease: 1 },
            ]),
        ),
    ]
}

/// A file filled up to MAX_BINDINGS_PER_FILE bindings, one more refused,
/// then room made and used.
fn binding_limit() -> Vec<Op> {
    let wide_bind = |slot| Op::Bind {
        lease: 0,
        slot,
        gpa: 200,
        file: 0,
        offset: 100,
        size: 1,
        unit: 32, // wide, in the file's pages
    };
    vec![
        Op::AddFile {
            file: 0,
            kind: 0,
            pages: 128 + 16, // 128 pages
            creator: 0,
        },
        Op::OpenLease { vm: 0, pid: 1 },
        Op::Fill { lease: 0, file: 0 },
        wide_bind(7), // refused: TooManyBindings
        Op::Unbind {
            lease: 0,
            slot: 128 + 8,
        }, // Fill's first binding: page 0 in slot 8
        Op::Bind {
            lease: 0,
            slot: 9,
            gpa: 0,
            file: 0,
            offset: 0,
            size: 1,
            unit: 0,
        }, // page 0 again, now free
        wide_bind(8), // refused again: TooManyBindings
    ]
}

fn write_seeds(dir: &Path, seeds: &[(String, Vec<u8>)], check: fn(&[u8])) {
    fs::create_dir_all(dir).expect("create corpus dir");
    for entry in fs::read_dir(dir).expect("read corpus dir") {
        let path = entry.expect("corpus entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
        {
            fs::remove_file(&path).expect("remove old seed");
        }
    }
    for (label, bytes) in seeds {
        check(bytes);
        fs::write(dir.join(format!("seed-{label}")), bytes).expect("write seed");
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

fn numbered<L: std::fmt::Display>(
    items: impl IntoIterator<Item = (L, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, (label, bytes))| (format!("{i:02}-{label}"), bytes))
        .collect()
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

    let scenarios = ledger_scenarios();
    for (label, ops) in &scenarios {
        // Round-trips through the byte layout; report how many steps succeed.
        assert_eq!(
            &ledger_ops::decode(&ledger_ops::encode(ops)),
            ops,
            "{label}"
        );
        let mut harness = Harness::new();
        let accepted = ops.iter().filter(|op| harness.step(**op)).count();
        println!(
            "ledger scenario {label}: {accepted}/{} ops accepted",
            ops.len()
        );
        if *label == "binding-limit" {
            let full = harness
                .ledger
                .file(&name("f0"))
                .expect("f0")
                .binding_count();
            assert_eq!(
                full, MAX_BINDINGS_PER_FILE,
                "{label} does not reach the limit"
            );
        }
    }
    let scenarios = numbered(
        scenarios
            .iter()
            .map(|(l, ops)| (*l, ledger_ops::encode(ops))),
    );
    write_seeds(
        &corpus.join("ledger_ops"),
        &scenarios,
        ledger_ops::check_ledger,
    );
}
