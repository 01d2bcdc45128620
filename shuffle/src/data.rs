//! The data object of one task attempt, written block by block: Sluice's
//! local writer on a local directory, a multipart upload elsewhere. Used
//! by map tasks writing directly and by the Flight shuffle service.
//!
//! Where the store has a multipart API, the upload's id is recorded in the
//! store before the first part goes up ([`UploadRecord`]), so that clean-up
//! after a crash can abort it: a listing never shows unfinished uploads.
//! The parts are cut and sent here, at most two in flight, rather than by
//! `object_store`'s `WriteMultipart`, which keeps the upload id to itself.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, PutPayloadMut, WriteMultipart};
use tokio::task::JoinSet;

use crate::SHUFFLE_FORMAT_VERSION;
use crate::local::LocalDataFile;
use crate::store::{AttemptId, ShuffleStore, UploadRecord};

/// Where an attempt's data object goes.
pub(crate) enum DataOut {
    /// Sluice's local writer, with bounded dirty pages.
    Local(Option<LocalDataFile>),
    /// A multipart upload to an object store.
    Remote(WriteMultipart),
    /// A multipart upload whose id is recorded in the store.
    Recorded(Box<RecordedUpload>),
}

/// A multipart upload recorded before its first part.
pub(crate) struct RecordedUpload {
    multipart: Arc<dyn MultipartStore>,
    store: ShuffleStore,
    /// The object, as the multipart API names it.
    path: Path,
    id: String,
    record: Path,
    part_size: usize,
    buffer: PutPayloadMut,
    next_part: usize,
    in_flight: JoinSet<object_store::Result<(usize, PartId)>>,
    parts: Vec<Option<PartId>>,
}

impl RecordedUpload {
    async fn open(
        store: &ShuffleStore,
        multipart: &Arc<dyn MultipartStore>,
        root: &Path,
        attempt: &AttemptId,
        part_size: usize,
    ) -> Result<Self> {
        let path = root
            .parts()
            .chain(ShuffleStore::data_path(attempt).parts())
            .collect::<Path>();
        let id = multipart
            .create_multipart(&path)
            .await
            .map_err(crate::ShuffleError::from)?;
        let record = ShuffleStore::upload_record_path(attempt);
        let body = serde_json::to_vec(&UploadRecord {
            format_version: SHUFFLE_FORMAT_VERSION,
            path: path.to_string(),
            upload_id: id.clone(),
        })
        .expect("upload records serialise");
        if let Err(e) = store
            .object_store()
            .put(&record, PutPayload::from(body))
            .await
        {
            // Unrecorded, the upload must not stay behind.
            let _ = multipart.abort_multipart(&path, &id).await;
            return Err(crate::ShuffleError::from(e).into());
        }
        Ok(Self {
            multipart: Arc::clone(multipart),
            store: store.clone(),
            path,
            id,
            record,
            part_size,
            buffer: PutPayloadMut::new(),
            next_part: 0,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
        })
    }

    /// Sends the buffer as the next part; waits while two are in flight.
    async fn send_part(&mut self) -> Result<()> {
        while self.in_flight.len() >= 2 {
            self.reap_one().await?;
        }
        let payload = std::mem::take(&mut self.buffer).freeze();
        let idx = self.next_part;
        self.next_part += 1;
        self.parts.push(None);
        let multipart = Arc::clone(&self.multipart);
        let (path, id) = (self.path.clone(), self.id.clone());
        self.in_flight.spawn(async move {
            let part = multipart.put_part(&path, &id, idx, payload).await?;
            Ok((idx, part))
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        if let Some(joined) = self.in_flight.join_next().await {
            let (idx, part) = joined
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .map_err(crate::ShuffleError::from)?;
            self.parts[idx] = Some(part);
        }
        Ok(())
    }

    async fn put(&mut self, block: Bytes) -> Result<()> {
        self.buffer.push(block);
        if self.buffer.content_length() >= self.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        // The last part may be short; an upload has at least one part.
        if self.buffer.content_length() > 0 || self.next_part == 0 {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let parts = std::mem::take(&mut self.parts)
            .into_iter()
            .map(|p| p.expect("every part was sent"))
            .collect();
        self.multipart
            .complete_multipart(&self.path, &self.id, parts)
            .await
            .map_err(crate::ShuffleError::from)?;
        match self.store.object_store().delete(&self.record).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(crate::ShuffleError::from(e).into()),
        }
    }

    async fn abort(mut self, attempt: &AttemptId) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Err(e) = self.multipart.abort_multipart(&self.path, &self.id).await {
            tracing::warn!(%attempt, error = %e, "could not abort a shuffle upload; clean-up aborts it from its record");
            return;
        }
        let _ = self.store.object_store().delete(&self.record).await;
    }
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
            None if store.multipart().is_some() => {
                let (multipart, root) = store.multipart().expect("checked");
                DataOut::Recorded(Box::new(
                    RecordedUpload::open(store, multipart, root, attempt, part_size).await?,
                ))
            }
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
            Self::Recorded(upload) => upload.put(block).await?,
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
            Self::Recorded(upload) => (*upload).finish().await?,
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
            Self::Recorded(upload) => (*upload).abort(attempt).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn attempt(task: u32) -> AttemptId {
        AttemptId {
            job: "job-up".into(),
            stage: 0,
            task,
            attempt: 0,
        }
    }

    fn store() -> (ShuffleStore, Arc<InMemory>) {
        let mem = Arc::new(InMemory::new());
        let store = ShuffleStore::new(Arc::clone(&mem) as _, "memory://shuffle")
            .with_multipart(Arc::clone(&mem) as _, Path::default());
        (store, mem)
    }

    async fn record_of(store: &ShuffleStore, id: &AttemptId) -> Option<UploadRecord> {
        let r = store
            .object_store()
            .get(&ShuffleStore::upload_record_path(id))
            .await
            .ok()?;
        Some(serde_json::from_slice(&r.bytes().await.unwrap()).unwrap())
    }

    #[tokio::test]
    async fn uploads_are_recorded_until_they_complete() {
        let (store, _mem) = store();
        let id = attempt(0);
        let mut out = DataOut::open(&store, &id, 8).await.unwrap();
        let record = record_of(&store, &id)
            .await
            .expect("recorded before any part");
        assert_eq!(record.path, ShuffleStore::data_path(&id).to_string());
        for i in 0..5u8 {
            out.put(Bytes::from(vec![i; 5])).await.unwrap();
        }
        out.finish().await.unwrap();
        assert!(record_of(&store, &id).await.is_none());
        let data = store
            .object_store()
            .get(&ShuffleStore::data_path(&id))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let expected: Vec<u8> = (0..5u8).flat_map(|i| vec![i; 5]).collect();
        assert_eq!(data.as_ref(), expected.as_slice());
    }

    #[tokio::test]
    async fn an_upload_left_by_a_crash_is_aborted_by_clean_up() {
        let (store, mem) = store();
        let id = attempt(1);
        let mut out = DataOut::open(&store, &id, 8).await.unwrap();
        out.put(Bytes::from(vec![1u8; 20])).await.unwrap();
        // The writer dies here: no finish, no abort.
        std::mem::forget(out);
        let record = record_of(&store, &id).await.unwrap();
        let path = Path::from(record.path.as_str());
        let part = || PutPayload::from(vec![0u8; 4]);
        // The upload is open: the store takes parts for it.
        mem.put_part(&path, &record.upload_id, 0, part())
            .await
            .unwrap();
        store.delete_job(&id.job).await.unwrap();
        assert!(record_of(&store, &id).await.is_none());
        assert!(
            mem.put_part(&path, &record.upload_id, 0, part())
                .await
                .is_err(),
            "the upload should have been aborted"
        );
    }
}
