//! Messages to keys: posted whether or not the key is held, read in order,
//! removed durably only when acknowledged, bounded per key.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::{Error, MAX_INBOX_MESSAGES};
use serde_json::json;

#[actix_rt::test]
async fn messages_wait_in_order_until_acknowledged_whoever_holds_the_key() {
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    let holder = profiles(&a).open("p").await.unwrap();
    holder.update(|p| p.coins = 3).await.unwrap();
    // From another process, while the key is held, and to a key never stored.
    assert_eq!(profiles(&b).post_message("p", json!({"gift": "sword"})).await.unwrap(), 1);
    assert_eq!(profiles(&b).post_message("p", json!("hello")).await.unwrap(), 2);
    assert_eq!(profiles(&b).post_message("offline", json!(1)).await.unwrap(), 1);
    assert_eq!(holder.read(|p| p.coins).await.unwrap(), 3, "the holder's session is untouched");
    assert!(!profiles(&b).is_loaded("p"));

    let waiting = profiles(&a).messages("p").await.unwrap();
    let bodies: Vec<_> = waiting.iter().map(|m| (m.id, m.body.clone())).collect();
    assert_eq!(bodies, [(1, json!({"gift": "sword"})), (2, json!("hello"))]);
    assert_eq!(profiles(&a).ack_messages("p", 1).await.unwrap(), (1, 1));
    assert_eq!(profiles(&a).ack_messages("p", 1).await.unwrap(), (0, 1), "a repeated ack removes nothing");
    // Durable: a fresh process sees what is left.
    let c = node(&backend, "c").await;
    assert_eq!(profiles(&c).messages("p").await.unwrap().iter().map(|m| m.id).collect::<Vec<_>>(), [2]);
    assert_eq!(profiles(&c).ack_messages("p", 99).await.unwrap(), (1, 0));
    assert!(profiles(&c).messages("p").await.unwrap().is_empty());
    assert_eq!(profiles(&c).post_message("p", json!(3)).await.unwrap(), 3, "ids are never reused");
    assert_eq!(profiles(&c).ack_messages("never", 5).await.unwrap(), (0, 0));
}

#[actix_rt::test]
async fn a_full_inbox_refuses_the_next_message_and_keeps_every_waiting_one() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    for i in 0..MAX_INBOX_MESSAGES {
        store.post_message("p", json!(i)).await.unwrap();
    }
    let e = store.post_message("p", json!("one too many")).await.unwrap_err();
    assert!(matches!(e, Error::InboxFull { limit: MAX_INBOX_MESSAGES, .. }), "{e:?}");
    let waiting = store.messages("p").await.unwrap();
    assert_eq!(waiting.len(), MAX_INBOX_MESSAGES);
    assert_eq!(waiting.last().unwrap().body, json!(MAX_INBOX_MESSAGES - 1));
    store.ack_messages("p", 1).await.unwrap();
    store.post_message("p", json!("fits again")).await.unwrap();
    let e = store.post_message("bad\tkey", json!(1)).await.unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
}

#[actix_rt::test]
async fn inbox_store_names_are_reserved() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let e = ds.store("profiles:inbox", datastorer::StoreSpec::new(template())).unwrap_err();
    assert!(matches!(e, Error::InvalidName { what: "store name", .. }), "{e:?}");
    // Posting still works: the engine opens the inbox store itself.
    profiles(&ds).post_message("p", json!(1)).await.unwrap();
}

#[actix_rt::test]
async fn a_message_handler_gets_waiting_messages_on_open_and_new_ones_while_open() {
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    let store = profiles(&a);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    store.on_message(move |session, m| {
        let _ = tx.send((session.key().to_owned(), m.body.clone()));
        m.body != json!("not now")
    });
    let timeout = std::time::Duration::from_secs(10);
    profiles(&b).post_message("p", json!("waiting")).await.unwrap();
    let _session = store.open("p").await.unwrap();
    let got = tokio::time::timeout(timeout, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, ("p".to_owned(), json!("waiting")), "a message that waited arrives with the open");

    profiles(&b).post_message("p", json!("while open")).await.unwrap();
    let got = tokio::time::timeout(timeout, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got.1, json!("while open"));
    profiles(&b).post_message("p", json!("not now")).await.unwrap();
    let got = tokio::time::timeout(timeout, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got.1, json!("not now"));
    // Processed ones are acknowledged; the refused one stays.
    for _ in 0..200 {
        if store.messages("p").await.unwrap().len() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let left: Vec<_> = store.messages("p").await.unwrap().into_iter().map(|m| m.body).collect();
    assert_eq!(left, [json!("not now")]);
    // A key not open here is not handled: its messages wait.
    profiles(&b).post_message("offline", json!(1)).await.unwrap();
    assert_eq!(store.messages("offline").await.unwrap().len(), 1);
}

/// Regression: the handler's watcher heard inbox changes on the broadcast
/// channel of all notices and skipped whatever a lag dropped, so a message
/// posted just before a burst of other saves waited for the next message
/// or the next open. The watcher runs on another arbiter here, held while
/// the message is posted and ten thousand other notices follow it (more
/// than the channel keeps).
#[actix_rt::test]
async fn a_message_reaches_its_handler_through_a_burst_of_other_notices() {
    use datastorer::storage::{Backend, Notice, NoticeKind};
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = actix::Arbiter::new();
    let (set, handler_set) = tokio::sync::oneshot::channel();
    let on_watcher = store.clone();
    watcher.spawn(async move {
        on_watcher.on_message(move |_, m| {
            let _ = tx.send(m.body.clone());
            true
        });
        let _ = set.send(());
    });
    handler_set.await.unwrap();
    let _session = store.open("p").await.unwrap();
    // Hold the watcher's thread until the burst is over.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (holding, watcher_held) = tokio::sync::oneshot::channel();
    watcher.spawn(async move {
        let _ = holding.send(());
        let _ = held.recv();
    });
    watcher_held.await.unwrap();
    store.post_message("p", json!("gift")).await.unwrap();
    for revision in 0..10_000 {
        let n = Notice { store: "elsewhere".into(), key: "k".into(), kind: NoticeKind::Saved { revision } };
        datastorer::testing::publish(backend.notices(), n);
    }
    release.send(()).unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
    assert_eq!(got.expect("the message reaches the handler").unwrap(), json!("gift"));
    watcher.stop();
}

/// Regression (issue 22, F1): deleting a key left its inbox behind, so the
/// next holder of the key was handed the gifts posted before the delete.
/// A delete takes everything stored for the key, inbox included, whether
/// or not the key itself has a record.
#[actix_rt::test]
async fn deleting_a_key_deletes_its_waiting_messages_too() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    store.open("p").await.unwrap().release(datastorer::Priority::Normal).await.unwrap();
    store.post_message("p", json!({"gift": "shield"})).await.unwrap();
    store.post_message("only-mail", json!("hi")).await.unwrap();
    assert!(stored(&backend, "profiles:inbox", "p").is_some());

    assert!(store.delete("p", false).await.unwrap());
    assert!(stored(&backend, "profiles:inbox", "p").is_none(), "the inbox went with the record");
    assert!(store.messages("p").await.unwrap().is_empty());
    assert!(!store.delete("only-mail", false).await.unwrap(), "no record existed");
    assert!(stored(&backend, "profiles:inbox", "only-mail").is_none(), "its inbox is gone all the same");

    // A message posted after the delete is for the key's next holder.
    store.post_message("p", json!("welcome back")).await.unwrap();
    let bodies: Vec<_> = store.messages("p").await.unwrap().into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, [json!("welcome back")]);
}

#[actix_rt::test]
async fn an_oversized_message_or_inbox_is_refused_in_the_stores_own_name_and_keeps_what_waits() {
    let backend = Arc::new(MemoryBackend::new());
    let mut config = config(&backend, "a");
    config.max_document_bytes = 40 * 1024;
    let ds = datastorer::Datastorer::start(config).await.unwrap();
    let store = profiles(&ds);
    let big = "x".repeat(datastorer::MAX_MESSAGE_BYTES);
    let e = store.post_message("p", json!(big)).await.unwrap_err();
    assert!(matches!(e, Error::MessageTooLarge { .. }), "{e:?}");
    let said = e.to_string();
    assert!(said.contains("store `profiles`") && !said.contains(":inbox"), "{said}");
    assert!(store.messages("p").await.unwrap().is_empty(), "nothing was posted");
    // Messages that fit one by one, until the inbox would outgrow the
    // largest document.
    let part = json!("y".repeat(12 * 1024));
    let mut posted = 0;
    let e = loop {
        match store.post_message("p", part.clone()).await {
            Ok(_) => posted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(posted, 3, "three 12 KiB messages fit 40 KiB, a fourth does not");
    assert!(matches!(e, Error::InboxTooLarge { limit: 40960, .. }), "{e:?}");
    assert!(!e.to_string().contains(":inbox"), "{e}");
    assert_eq!(store.messages("p").await.unwrap().len(), 3, "what waits is kept");
    // Acknowledging makes room again.
    store.ack_messages("p", 1).await.unwrap();
    store.post_message("p", part).await.unwrap();
}

/// The record and its messages go in one step: a delete the storage
/// refuses halfway (here, the inbox's write fails for good) leaves both,
/// never a deleted record whose gifts wait for its next life.
#[actix_rt::test]
async fn a_delete_that_fails_deletes_neither_the_record_nor_its_messages() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    store.update_unleased("p", datastorer::Expect::Anything, |p| p.coins = 5).await.unwrap();
    store.post_message("p", json!({"gift": "sword"})).await.unwrap();
    let inbox_key = datastorer::storage::storage_key("profiles:inbox", "p");
    backend.fail_next(datastorer::testing::OpKind::Write, Some(&inbox_key), 1_000, datastorer::ErrorKind::Permanent);
    assert!(store.delete("p", false).await.is_err(), "the storage refused");
    backend.clear_faults();
    assert_eq!(stored_json(&backend, "profiles", "p")["coins"], 5, "the record is still there");
    assert_eq!(store.messages("p").await.unwrap().len(), 1, "and so is its message");
    assert!(store.delete("p", false).await.unwrap());
    assert!(stored(&backend, "profiles", "p").is_none() && store.messages("p").await.unwrap().is_empty());
}
