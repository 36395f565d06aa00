//! Placeholder, replaced by the real store.
#![allow(missing_docs)]
#[derive(Debug)]
pub struct PostgresStore;
impl PostgresStore {
    pub async fn open(_url: &str) -> crate::Result<super::MemoryStore> {
        unimplemented!()
    }
}
