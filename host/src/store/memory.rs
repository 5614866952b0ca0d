//! [`MemStore`]: models held in memory, by name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{check_range, ModelStore, Source, StoreError, DEFAULT_MAX_REQUEST};

/// Serves models held in memory, by name. For embedding examples and tests.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    models: Arc<RwLock<HashMap<String, Arc<[u8]>>>>,
    enabled: bool,
    max_request: Option<u64>,
}

impl MemStore {
    /// An empty store; `is_enabled` is false (a store limited to small models).
    pub fn new() -> Self {
        Self::default()
    }

    /// Set what [`ModelStore::is_enabled`] reports.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Change the largest request served at once (default [`DEFAULT_MAX_REQUEST`]).
    pub fn with_max_request(mut self, max_request: u64) -> Self {
        self.max_request = Some(max_request);
        self
    }

    /// Add (or replace) the model called `name`.
    pub fn insert(&self, name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        models.insert(name.into(), bytes.into());
    }
}

impl ModelStore for MemStore {
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let bytes = models.get(name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("no model named '{name}' in the memory store"))
        })?;
        Ok(Box::new(MemSource {
            bytes,
            max_request: self.max_request.unwrap_or(DEFAULT_MAX_REQUEST),
        }))
    }

    fn is_enabled(&self) -> bool {
        self.enabled
    }
}

/// A model held in memory, served by [`MemStore`].
#[derive(Debug, Clone)]
pub struct MemSource {
    bytes: Arc<[u8]>,
    max_request: u64,
}

impl Source for MemSource {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (start, end) = check_range(offset, len, self.size(), self.max_request)?;
        Ok(self.bytes[start..end].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ByteRange;

    #[test]
    fn mem_store() {
        let store = MemStore::new();
        assert!(!store.is_enabled());
        assert!(store.clone().with_enabled(true).is_enabled());
        store.insert("a", vec![1u8, 2, 3, 4, 5]);
        let src = store.open("a").expect("open");
        assert_eq!(src.size(), 5);
        assert_eq!(src.read_at(1, 3).expect("read"), vec![2, 3, 4]);
        assert!(matches!(src.read_at(4, 2), Err(StoreError::OutOfRange(_))));
        assert!(matches!(
            src.read_at(u64::MAX, 1),
            Err(StoreError::OutOfRange(_))
        ));
        let got = src
            .load_layer(&[
                ByteRange { offset: 4, len: 1 },
                ByteRange { offset: 0, len: 2 },
            ])
            .expect("gather");
        assert_eq!(got, vec![5, 1, 2]);
        assert!(matches!(store.open("b"), Err(StoreError::NotFound(_))));
        let small = store.clone().with_max_request(2);
        assert_eq!(
            small.open("a").expect("open").read_at(0, 3),
            Err(StoreError::TooLarge(3))
        );
    }
}
