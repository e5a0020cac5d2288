//! Command streams: request/reply beside push sessions, and a push back over the connection
//! a command came on (how a pull DP fetches from a source DP).

mod common;

use common::*;
use freight_transport::command::{self, CommandHandler, Reply};
use freight_transport::quic::{Conn, Node};
use freight_transport::session::{self, PushOptions, PushReport};
use freight_transport::store::SharedLibrary;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Echoes requests reversed, and on `push` pushes its package back to the asker.
struct Source {
    lib: SharedLibrary,
    manifest: freight_core::Manifest,
}

impl CommandHandler for Source {
    fn handle(&self, conn: Conn, request: Vec<u8>) -> Reply {
        let (lib, m) = (self.lib.clone(), self.manifest.clone());
        Box::pin(async move {
            if request == b"push" {
                let mut report = PushReport::default();
                match session::push(&conn, &lib, &m, &PushOptions::default(), &mut report).await {
                    Ok(()) => format!("pushed {}", report.chunks_sent).into_bytes(),
                    Err(e) => format!("failed: {e}").into_bytes(),
                }
            } else {
                format!(
                    "{} says {}",
                    conn.peer().code,
                    String::from_utf8_lossy(&request)
                )
                .into_bytes()
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_and_a_source_can_push_back_on_the_same_connection() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (Site::new(t.path(), "SRC"), Site::new(t.path(), "DST"));
    src.trusts(&dst);
    dst.trusts(&src);
    let m = ingest_tree(
        &t.path().join("lib-src"),
        &t.path().join("tree"),
        "SRC00001",
        1,
        8 << 20,
        5,
    );
    let src_lib = SharedLibrary::new(library(&t.path().join("lib-src")));
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), src.tls(), fast_config()).unwrap();
    let handler: Arc<dyn CommandHandler> = Arc::new(Source {
        lib: src_lib.clone(),
        manifest: m.clone(),
    });
    tokio::spawn(session::serve(
        node.clone(),
        src_lib.clone(),
        None,
        Some(handler),
    ));

    // The asking side connects and serves push sessions on its own outgoing connection.
    let client = Node::bind("127.0.0.1:0".parse().unwrap(), dst.tls(), fast_config()).unwrap();
    let conn = client
        .connect(node.local_addr().unwrap(), code("SRC"))
        .await
        .unwrap();
    let dst_lib = SharedLibrary::new(library(&t.path().join("lib-dst")));
    let (tx, mut events) = mpsc::unbounded_channel();
    // SRC is DST's parent site here (the test's trust), so its push is allowed.
    tokio::spawn(session::serve_connection(
        conn.clone(),
        dst_lib.clone(),
        Some(tx),
        None,
        freight_transport::authz::Request::Push,
    ));

    let reply = command::request(&conn, b"hello").await.unwrap();
    assert_eq!(reply, b"DST says hello");
    let reply = String::from_utf8(command::request(&conn, b"push").await.unwrap()).unwrap();
    assert!(reply.starts_with("pushed "), "{reply}");
    let ev = events.recv().await.unwrap();
    ev.result.unwrap();
    assert_eq!(ev.package, Some((m.package.clone(), 1)));
    assert!(dst_lib.read().missing(&m).is_empty());
    assert_eq!(
        dst_lib.read().manifest(&m.package, 1).unwrap().hash(),
        m.hash()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_a_node_without_a_handler_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (Site::new(t.path(), "AAA"), Site::new(t.path(), "BBB"));
    a.trusts(&b);
    b.trusts(&a);
    let r = receiving(&b, &t.path().join("lib"), fast_config());
    let (_client, conn) = connect(&a, &r, "BBB").await;
    let err = command::request(&conn, b"hello")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("command stream"), "{err}");
}
