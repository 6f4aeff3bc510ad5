//! [`FdStore`] against a notify socket the test binds itself.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{bind, socket_with, sockopt, AddressFamily, SocketFlags, SocketType};

use super::notify::{recv, Message};
use super::*;

/// A bound, non-blocking notify socket that asks for credentials.
fn manager(address: &str) -> OwnedFd {
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .unwrap();
    sockopt::set_socket_passcred(&socket, true).unwrap();
    bind(&socket, &notify::parse_address(address).unwrap()).unwrap();
    socket
}

fn next(socket: &OwnedFd) -> Message {
    let message = recv(socket.as_fd()).unwrap().expect("a queued message");
    assert_eq!(message.pid, Some(std::process::id()));
    message
}

fn abstract_address(tag: &str) -> String {
    format!("@gmemd-fdstore-test-{}-{tag}", std::process::id())
}

fn file_with(text: &str) -> std::fs::File {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn content(fd: OwnedFd) -> String {
    let mut file = std::fs::File::from(fd);
    file.rewind().unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn store_sends_the_fd_with_its_name_and_fdpoll_off() {
    let address = abstract_address("store");
    let socket = manager(&address);
    let mut store = FdStore::connect(&address, 4).unwrap();
    store.store("f1", file_with("one").as_fd()).unwrap();
    let message = next(&socket);
    assert_eq!(message.text, "FDSTORE=1\nFDNAME=f1\nFDPOLL=0\n");
    assert_eq!(message.fds.len(), 1);
    assert_eq!(content(message.fds.into_iter().next().unwrap()), "one");
    assert_eq!((store.stored(), store.limit()), (1, 4));
    assert!(store.is_stored("f1"));
}

#[test]
fn storing_a_name_again_replaces_it() {
    let address = abstract_address("replace");
    let socket = manager(&address);
    let mut store = FdStore::connect(&address, 1).unwrap();
    store.store("listen", file_with("old").as_fd()).unwrap();
    next(&socket);
    // The store is full, but a replacement takes no new room.
    store.store("listen", file_with("new").as_fd()).unwrap();
    let remove = next(&socket);
    assert_eq!(remove.text, "FDSTOREREMOVE=1\nFDNAME=listen\n");
    assert!(remove.fds.is_empty());
    let again = next(&socket);
    assert_eq!(again.get("FDNAME"), Some("listen"));
    assert_eq!(content(again.fds.into_iter().next().unwrap()), "new");
    assert_eq!(store.stored(), 1);
}

#[test]
fn a_full_store_refuses_before_sending() {
    let address = abstract_address("full");
    let socket = manager(&address);
    let mut store = FdStore::connect(&address, 2).unwrap();
    store.adopt(["f1"]);
    store.store("f2", file_with("x").as_fd()).unwrap();
    next(&socket);
    let err = store.store("f3", file_with("y").as_fd()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    let typed = err.get_ref().and_then(|e| e.downcast_ref::<FdStoreError>());
    assert!(
        matches!(typed, Some(FdStoreError::Full { limit: 2 })),
        "{err}"
    );
    assert!(recv(socket.as_fd()).unwrap().is_none(), "nothing was sent");
    store.remove("f1").unwrap();
    assert_eq!(next(&socket).text, "FDSTOREREMOVE=1\nFDNAME=f1\n");
    store.store("f3", file_with("y").as_fd()).unwrap();
    assert_eq!(next(&socket).get("FDNAME"), Some("f3"));
    assert_eq!(store.stored(), 2);
}

#[test]
fn bad_names_are_refused() {
    let address = abstract_address("names");
    let socket = manager(&address);
    let mut store = FdStore::connect(&address, 8).unwrap();
    let file = file_with("x");
    for bad in ["", "f:1", "a b", "x\ny"] {
        let err = store.store(bad, file.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        assert!(store.remove(bad).is_err());
    }
    assert!(recv(socket.as_fd()).unwrap().is_none());
    assert_eq!(store.stored(), 0);
}

#[test]
fn ready_status_stopping_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let address = path.to_str().unwrap().to_owned();
    let socket = manager(&address);
    let mut store = FdStore::connect(&address, 0).unwrap();
    store.ready("3 files\n2 leases").unwrap();
    assert_eq!(next(&socket).text, "READY=1\nSTATUS=3 files 2 leases\n");
    store.status("busy").unwrap();
    assert_eq!(next(&socket).text, "STATUS=busy\n");
    store.watchdog().unwrap();
    assert_eq!(next(&socket).text, "WATCHDOG=1\n");
    store.stopping().unwrap();
    assert_eq!(next(&socket).text, "STOPPING=1\n");
    let err = store.store("f1", path_fd(&path).as_fd()).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::StorageFull,
        "limit 0 stores nothing"
    );
}

fn path_fd(path: &std::path::Path) -> OwnedFd {
    std::fs::File::open(path.parent().unwrap()).unwrap().into()
}

#[test]
fn a_missing_manager_is_an_error_not_a_hang() {
    let mut store = FdStore::connect(&abstract_address("nobody"), 1).unwrap();
    let err = store.status("x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(FdStore::connect("not/absolute", 1).is_err());
}
