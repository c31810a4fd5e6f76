//! The user's source of truth behind object-safe wrappers, so a
//! [`Cache`](crate::Cache)'s type does not name its loader or writer.

use std::future::Future;
use std::pin::Pin;

use larder_core::{Loader, Result, Writer};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) trait DynLoader<K, V>: Send + Sync {
    fn load<'a>(&'a self, key: &'a K) -> BoxFuture<'a, Result<Option<V>>>;
    fn load_many<'a>(&'a self, keys: &'a [K]) -> BoxFuture<'a, Result<Vec<Option<V>>>>;
}

impl<K, V, L> DynLoader<K, V> for L
where
    K: Send + Sync + 'static,
    V: Send + 'static,
    L: Loader<K, V>,
{
    fn load<'a>(&'a self, key: &'a K) -> BoxFuture<'a, Result<Option<V>>> {
        Box::pin(Loader::load(self, key))
    }

    fn load_many<'a>(&'a self, keys: &'a [K]) -> BoxFuture<'a, Result<Vec<Option<V>>>> {
        Box::pin(Loader::load_many(self, keys))
    }
}

pub(crate) trait DynWriter<K, V>: Send + Sync {
    fn write<'a>(&'a self, key: &'a K, value: &'a V) -> BoxFuture<'a, Result<()>>;
    fn delete<'a>(&'a self, key: &'a K) -> BoxFuture<'a, Result<()>>;
    fn write_many<'a>(&'a self, entries: &'a [(K, V)]) -> BoxFuture<'a, Result<()>>;
}

impl<K, V, W> DynWriter<K, V> for W
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    W: Writer<K, V>,
{
    fn write<'a>(&'a self, key: &'a K, value: &'a V) -> BoxFuture<'a, Result<()>> {
        Box::pin(Writer::write(self, key, value))
    }

    fn delete<'a>(&'a self, key: &'a K) -> BoxFuture<'a, Result<()>> {
        Box::pin(Writer::delete(self, key))
    }

    fn write_many<'a>(&'a self, entries: &'a [(K, V)]) -> BoxFuture<'a, Result<()>> {
        Box::pin(Writer::write_many(self, entries))
    }
}
