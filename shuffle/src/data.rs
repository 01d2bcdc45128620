//! The data object of one task attempt, written block by block: Sluice's
//! local writer on a local directory, a multipart upload elsewhere. Used
//! by map tasks writing directly and by the Flight shuffle service.

use datafusion::error::{DataFusionError, Result};
use object_store::{ObjectStoreExt, WriteMultipart};

use crate::local::LocalDataFile;
use crate::store::{AttemptId, ShuffleStore};

/// Where an attempt's data object goes.
pub(crate) enum DataOut {
    /// Sluice's local writer, with bounded dirty pages.
    Local(Option<LocalDataFile>),
    /// A multipart upload to an object store.
    Remote(WriteMultipart),
}

impl DataOut {
    /// Opens the data object of `attempt`.
    pub(crate) async fn open(
        store: &ShuffleStore,
        attempt: &AttemptId,
        part_size: usize,
    ) -> Result<Self> {
        let data_path = ShuffleStore::data_path(attempt);
        Ok(match store.local_path(&data_path) {
            Some(path) => DataOut::Local(Some(LocalDataFile::create(path)?)),
            None => {
                let upload = store
                    .object_store()
                    .put_multipart(&data_path)
                    .await
                    .map_err(crate::ShuffleError::from)?;
                DataOut::Remote(WriteMultipart::new_with_chunk_size(upload, part_size))
            }
        })
    }

    pub(crate) async fn put(&mut self, block: bytes::Bytes) -> Result<()> {
        match self {
            Self::Remote(upload) => {
                // Back-pressure: at most two parts in flight per writer.
                upload
                    .wait_for_capacity(2)
                    .await
                    .map_err(crate::ShuffleError::from)?;
                upload.put(block);
            }
            Self::Local(slot) => {
                let mut file = slot.take().expect("local file present between writes");
                let file = tokio::task::spawn_blocking(move || file.write(&block).map(|()| file))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
                *slot = Some(file);
            }
        }
        Ok(())
    }

    pub(crate) async fn finish(self) -> Result<()> {
        match self {
            Self::Remote(upload) => {
                upload.finish().await.map_err(crate::ShuffleError::from)?;
            }
            Self::Local(slot) => {
                let file = slot.expect("local file present");
                tokio::task::spawn_blocking(move || file.finish())
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
            }
        }
        Ok(())
    }

    pub(crate) async fn abort(self, attempt: &AttemptId) {
        match self {
            Self::Remote(upload) => {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(%attempt, error = %e, "could not abort a shuffle upload");
                }
            }
            Self::Local(slot) => {
                if let Some(file) = slot {
                    let _ = tokio::task::spawn_blocking(move || file.abort()).await;
                }
            }
        }
    }
}
