//! Placeholder, replaced by the real store.
#![allow(missing_docs)]
#[derive(Debug)]
pub struct SqliteStore;
impl SqliteStore {
    pub async fn open(_url: &str) -> crate::Result<super::MemoryStore> {
        unimplemented!()
    }
}
