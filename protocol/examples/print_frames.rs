//! Prints the bytes of real encoded frames, for the worked examples in
//! `protocol/PROTOCOL.md`.
//!
//! `cargo run -p gmem-protocol --example print_frames`

use gmem_protocol::wire::{
    encode_status_page, BindingStatus, CreateFlags, CreateRequest, DaemonStatus, Features,
    FileInfo, FileRef, FileStatus, GuestAddress, Header, Hello, HelloReply, LeaseId, MemoryKind,
    Name, OwnerStatus, Reply, Request, RequestBody, RestartNotice, StatusQuery, StatusSection,
    VmId, VmSelector, MARKER_CODES, VERSION,
};

/// Prints one frame: the 12 header bytes on one line, then the payload in
/// rows of 16 bytes, each row prefixed with its payload offset.
fn dump(title: &str, header: Header, payload: &[u8]) {
    println!("{title}: header 12 + payload {} bytes", payload.len());
    let head = header.to_bytes();
    println!("  header  {}", hex(&head));
    for (row, chunk) in payload.chunks(16).enumerate() {
        println!("  {:04x}    {}", row * 16, hex(chunk));
    }
    println!();
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn request(title: &str, body: &RequestBody) {
    let payload = body.encode();
    dump(
        title,
        Header::request(body.request(), payload.len()),
        &payload,
    );
}

fn reply(title: &str, code: Request, reply: &Reply) {
    let payload = reply.encode();
    dump(title, Header::reply(code as u32, payload.len()), &payload);
}

fn main() {
    let name = |s: &str| Name::new(s).expect("valid name");
    let vm = VmId::from_name(name("vm-a"));
    println!("VM vm-a: uuid {} (Uuid::from_name)\n", vm.uuid);

    request(
        "HELLO request (VM lease vm-a, offers every feature)",
        &RequestBody::Hello(Hello {
            features: Features::all(),
            vm: Some(vm.clone()),
        }),
    );
    reply(
        &format!(
            "HELLO reply (features {:#x}, lease 1, version 1)",
            Features::all().bits()
        ),
        Request::Hello,
        &Reply::ok(
            HelloReply {
                features: Features::all(),
                lease: Some(LeaseId::FIRST),
                version: VERSION,
            }
            .encode(),
        ),
    );

    request(
        "CREATE request (ram0, 2 MiB memfd, no flags)",
        &RequestBody::Create(CreateRequest {
            name: name("ram0"),
            size: 2 << 20,
            kind: MemoryKind::Memfd,
            flags: CreateFlags::empty(),
        }),
    );
    reply(
        "CREATE reply (1 fd in SCM_RIGHTS; size 2 MiB, page 4096, memfd, CREATED)",
        Request::Create,
        &Reply::ok(
            FileInfo {
                size: 2 << 20,
                page_size: 4096,
                kind: MemoryKind::Memfd,
                created: true,
            }
            .encode(),
        ),
    );

    reply(
        "CREATE error reply (EEXIST = 17, no fd)",
        Request::Create,
        &Reply::error(17, "memory file ram0 already exists"),
    );

    request(
        "OPEN request, scoped (an operator names vm-a's ram0 by VM name)",
        &RequestBody::Open(FileRef::vm(VmSelector::Name(name("vm-a")), name("ram0"))),
    );

    request(
        "STATUS request (files, start 0)",
        &RequestBody::Status(StatusQuery {
            section: StatusSection::Files,
            start: 0,
        }),
    );
    let file = FileStatus {
        name: name("ram0"),
        size: 2 << 20,
        page_size: 4096,
        kind: MemoryKind::Memfd,
        owner: Some(OwnerStatus {
            vm: vm.clone(),
            lease: LeaseId::FIRST,
        }),
        bindings: vec![BindingStatus {
            confirmed: false,
            slot: 0,
            gpa: GuestAddress(0),
            offset: 0,
            size: 2 << 20,
        }],
    };
    let (body, _) = encode_status_page(1, 0, std::slice::from_ref(&file), FileStatus::encode);
    reply(
        "STATUS reply (files page: 1 file, owned by vm-a, 1 binding)",
        Request::Status,
        &Reply::ok(body),
    );

    let notice = RestartNotice {
        restarts: 2,
        pending: false,
    }
    .encode_payload();
    dump(
        "NOTICE (restarted; restarts 2, pending 0)",
        Header::notice(notice.len()),
        &notice,
    );
    let marker = Header {
        code: *MARKER_CODES.start(),
        is_reply: false,
        size: 0,
    };
    dump("Marker request (code 0xffff0000, no payload)", marker, &[]);

    request("RESTART request (no payload)", &RequestBody::Restart);
    request(
        "STATUS request (daemon, start 0)",
        &RequestBody::Status(StatusQuery {
            section: StatusSection::Daemon,
            start: 0,
        }),
    );
    let daemon = DaemonStatus {
        pid: 1234,
        restarts: 2,
        // 2026-12-01 01:00:00 and 02:58:40 UTC.
        born: 1_796_086_800,
        started: 1_796_093_920,
        files: 3,
        leases: 1,
        recovered: "recovered 3 files, 1 lease".to_owned(),
    };
    let (body, _) = encode_status_page(1, 0, std::slice::from_ref(&daemon), DaemonStatus::encode);
    reply(
        "STATUS reply (daemon page: pid 1234, 2 restarts, 26 bytes of text)",
        Request::Status,
        &Reply::ok(body),
    );
}
