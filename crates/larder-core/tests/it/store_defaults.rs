//! The default bulk methods of `Store`, `Loader` and `Writer` over a plain
//! in-process map (this checks the trait's own code, not any Redis behaviour).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use larder_core::{Error, ErrorKind, FnLoader, Loader, Result, Store, StoreEntry, Writer};

#[derive(Debug, Default)]
struct MapStore(Mutex<HashMap<String, Vec<u8>>>);

#[async_trait]
impl Store for MapStore {
    fn name(&self) -> &str {
        "map"
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        larder_core::validate_key(key)?;
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    async fn set(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<()> {
        larder_core::validate_key(key)?;
        self.0.lock().unwrap().insert(key.into(), value.into());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.0.lock().unwrap().remove(key).is_some())
    }
    async fn set_if_absent(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<bool> {
        let mut m = self.0.lock().unwrap();
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.into(), value.into());
        Ok(true)
    }
    async fn set_if_newer(&self, _key: &str, _value: &[u8], _ttl: Duration) -> Result<bool> {
        Err(Error::new(ErrorKind::Unsupported, "not needed here"))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // The futures here never wait on I/O: poll to completion with a no-op waker.
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[test]
fn bulk_defaults_keep_order_and_count() {
    let store: Box<dyn Store> = Box::<MapStore>::default();
    let ttl = Duration::from_secs(1);
    block_on(store.set_many(&[
        StoreEntry {
            key: "a",
            value: b"1",
            ttl,
        },
        StoreEntry {
            key: "c",
            value: b"3",
            ttl,
        },
    ]))
    .unwrap();
    let got = block_on(store.get_many(&["c", "b", "a"])).unwrap();
    assert_eq!(got, vec![Some(b"3".to_vec()), None, Some(b"1".to_vec())]);
    assert_eq!(block_on(store.delete_many(&["a", "b", "c"])).unwrap(), 2);
    assert!(block_on(store.set_if_absent("a", b"x", ttl)).unwrap());
    assert!(!block_on(store.set_if_absent("a", b"y", ttl)).unwrap());
    let err = block_on(store.get_many(&["ok", ""])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
}

#[test]
fn loader_and_writer_defaults() {
    let loader = FnLoader::new(|k: u32| async move {
        if k == 13 {
            Err(Error::source_error(std::io::Error::other("unlucky")))
        } else {
            Ok(k.is_multiple_of(2).then_some(k * 10))
        }
    });
    assert_eq!(
        block_on(loader.load_many(&[2, 3, 4])).unwrap(),
        vec![Some(20), None, Some(40)]
    );
    let err = block_on(loader.load_many(&[2, 13])).unwrap_err();
    assert!(err.is_source());

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);
    impl Writer<u32, String> for Log {
        async fn write(&self, key: &u32, value: &String) -> Result<()> {
            self.0.lock().unwrap().push(format!("w{key}={value}"));
            Ok(())
        }
        async fn delete(&self, key: &u32) -> Result<()> {
            self.0.lock().unwrap().push(format!("d{key}"));
            Ok(())
        }
    }
    let log = Log::default();
    block_on(log.write_many(&[(1, "a".into()), (2, "b".into())])).unwrap();
    block_on(log.delete_many(&[1])).unwrap();
    assert_eq!(*log.0.lock().unwrap(), ["w1=a", "w2=b", "d1"]);
}
