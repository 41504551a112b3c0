//! The `s3mem.v1.Memory` service: checks each request, hands the work to a queue (model work)
//! or the blocking pool (index reads and writes), and converts the result.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use super::budget::{ByteBudget, Hold};
use super::convert::{self, check_name};
use super::engine::{CancelOnDrop, Engine, Upload};
use super::error::{Result, ServiceError};
use super::pb::{self, ingest_request::Part};
use super::queue::{Slot, WorkQueue};
use crate::answer::{Abstain, AnswerConfig};
use crate::text::document_text;

/// The service: the engine, its two work queues and the ingest buffers' budget.
#[derive(Clone)]
pub struct MemoryService {
    pub(super) engine: Arc<Engine>,
    pub(super) ingest: Arc<WorkQueue>,
    pub(super) query: Arc<WorkQueue>,
    /// The bytes all open ingests may buffer.
    pub(super) buffers: ByteBudget,
}

/// Runs a short index operation on the blocking pool (it touches the disk).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("an index task failed: {e}")))?
}

/// Runs model work in a place held in a queue (see [`WorkQueue::try_reserve`]).
async fn queued<T: Send + 'static>(
    slot: Slot,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    slot.submit(move || {
        let _ = tx.send(f());
    })?;
    rx.await
        .map_err(|_| ServiceError::Internal("a worker dropped its job (see the log)".into()))?
}

impl MemoryService {
    fn ready(&self) -> Result<()> {
        self.engine.loaded().map(|_| ())
    }

    /// Returns the error of a stream that failed: a message over the size limit is named as
    /// such; one that does not decode is the caller's bad input; anything else is the client
    /// breaking off, its cancel (nothing has been written).
    fn stream_error(&self, s: &Status) -> ServiceError {
        match s.code() {
            tonic::Code::OutOfRange => ServiceError::MessageTooLarge {
                limit: self.engine.limits().max_message_bytes,
            },
            tonic::Code::InvalidArgument => ServiceError::invalid("stream", s.message()),
            _ => {
                tracing::debug!(status = %s, "ingest stream broke off");
                ServiceError::Cancelled
            }
        }
    }

    /// Reads an ingest stream: the header, then text pieces up to the document limit, each
    /// taken from the ingest buffers' budget by `hold` before it is kept.
    async fn receive(
        &self,
        stream: &mut Streaming<pb::IngestRequest>,
        hold: &mut Hold,
    ) -> Result<Upload> {
        let limit = self.engine.limits().max_document_bytes;
        let first = stream.message().await.map_err(|s| self.stream_error(&s))?;
        let header = match first.and_then(|m| m.part) {
            Some(Part::Header(h)) => h,
            Some(Part::Text(_)) => {
                return Err(ServiceError::invalid(
                    "header",
                    "the first message must be the header, not text",
                ))
            }
            None => {
                return Err(ServiceError::invalid(
                    "header",
                    "the stream is empty: send an IngestHeader first",
                ))
            }
        };
        check_name("header.collection", &header.collection)?;
        let id = if header.id.is_empty() {
            None
        } else {
            check_name("header.id", &header.id)?;
            if header.id.starts_with('#') {
                return Err(ServiceError::invalid(
                    "header.id",
                    "starts with `#`, which is kept for generated ids",
                ));
            }
            Some(header.id)
        };
        convert::check_metadata(&header.metadata, self.engine.limits())?;
        let mut bytes = Vec::new();
        loop {
            // A stream that breaks off is the client's cancel: nothing has been written.
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(s) => return Err(self.stream_error(&s)),
            };
            match msg.part {
                Some(Part::Text(piece)) => {
                    if bytes.len() + piece.len() > limit {
                        return Err(ServiceError::invalid(
                            "text",
                            format!(
                                "the document is over the limit of {limit} bytes (max_document_bytes)"
                            ),
                        ));
                    }
                    hold.grow(piece.len())?;
                    bytes.extend_from_slice(&piece);
                }
                Some(Part::Header(_)) => {
                    return Err(ServiceError::invalid(
                        "header",
                        "a second header: send it once, first",
                    ))
                }
                None => return Err(ServiceError::invalid("part", "a message with no part")),
            }
        }
        let text = document_text(bytes, "text").map_err(|e| {
            ServiceError::invalid(
                "text",
                format!("is not utf-8 (invalid byte at offset {})", e.offset),
            )
        })?;
        if text.trim().is_empty() {
            return Err(ServiceError::invalid("text", "the document is empty"));
        }
        Ok(Upload {
            collection: header.collection,
            id,
            meta: header
                .metadata
                .into_iter()
                .map(|m| (m.key, m.value))
                .collect(),
            text,
        })
    }
}

#[tonic::async_trait]
impl pb::memory_server::Memory for MemoryService {
    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CreateCollectionResponse>, Status> {
        let name = request.into_inner().name;
        check_name("name", &name)?;
        let engine = self.engine.clone();
        blocking(move || engine.create_collection(&name)).await?;
        Ok(Response::new(pb::CreateCollectionResponse {}))
    }

    async fn list_collections(
        &self,
        _request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let engine = self.engine.clone();
        let list = blocking(move || engine.collections()).await?;
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn drop_collection(
        &self,
        request: Request<pb::DropCollectionRequest>,
    ) -> Result<Response<pb::DropCollectionResponse>, Status> {
        let name = request.into_inner().name;
        check_name("name", &name)?;
        let engine = self.engine.clone();
        blocking(move || engine.drop_collection(&name)).await?;
        Ok(Response::new(pb::DropCollectionResponse {}))
    }

    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        self.ready()?;
        // Admitted before its text is buffered: a full queue refuses at once, and at most
        // workers + depth uploads are open.
        let slot = self.ingest.try_reserve()?;
        let mut stream = request.into_inner();
        let mut hold = self.buffers.hold();
        let upload = self.receive(&mut stream, &mut hold).await?;
        let guard = CancelOnDrop::default();
        let cancel = guard.token();
        let engine = self.engine.clone();
        let queued_at = Instant::now();
        let (out, queue_seconds) = queued(slot, move || {
            // The text's bytes stay taken until the ingest is done with them.
            let _hold = hold;
            let queue_seconds = queued_at.elapsed().as_secs_f64();
            Ok((engine.ingest(&upload, &cancel)?, queue_seconds))
        })
        .await?;
        drop(guard);
        Ok(Response::new(convert::ingested_to_pb(out, queue_seconds)))
    }

    async fn list_documents(
        &self,
        request: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        let r = request.into_inner();
        check_name("collection", &r.collection)?;
        let page = convert::document_page(r.page_size, &r.page_token)?;
        let engine = self.engine.clone();
        let found =
            blocking(move || engine.documents_page(&r.collection, page.from, page.size)).await?;
        // Room for the framing besides the records.
        let room = self
            .engine
            .limits()
            .max_message_bytes
            .saturating_sub(64 * 1024);
        Ok(Response::new(convert::documents_to_pb(
            found.documents,
            found.next,
            room,
        )))
    }

    async fn get_document(
        &self,
        request: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::GetDocumentResponse>, Status> {
        let r = request.into_inner();
        check_name("collection", &r.collection)?;
        check_name("id", &r.id)?;
        let chars = r.chars.as_ref().map(convert::char_range).transpose()?;
        let engine = self.engine.clone();
        let (info, text) = blocking(move || engine.document(&r.collection, &r.id, chars)).await?;
        // Room for the record and framing besides the text.
        let room = self
            .engine
            .limits()
            .max_message_bytes
            .saturating_sub(64 * 1024);
        if text.len() > room {
            return Err(ServiceError::invalid(
                "chars",
                format!(
                    "the text asked for has {} bytes, more than one reply carries ({room}): ask for a char range",
                    text.len()
                ),
            )
            .into());
        }
        Ok(Response::new(pb::GetDocumentResponse {
            document: Some(info.into()),
            text,
        }))
    }

    async fn delete_document(
        &self,
        request: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        let r = request.into_inner();
        check_name("collection", &r.collection)?;
        check_name("id", &r.id)?;
        let engine = self.engine.clone();
        blocking(move || engine.delete(&r.collection, &r.id)).await?;
        Ok(Response::new(pb::DeleteDocumentResponse {}))
    }

    async fn retrieve(
        &self,
        request: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        let loaded = self.engine.loaded()?;
        let query = convert::query(
            request.into_inner().into(),
            self.engine.limits(),
            loaded.retrieval.default_method,
        )?;
        // Refused here, before the call takes a place in the queue.
        loaded.check_method(query.method)?;
        let guard = CancelOnDrop::default();
        let cancel = guard.token();
        let engine = self.engine.clone();
        let evidence = queued(self.query.try_reserve()?, move || {
            engine.retrieve(&query, &cancel)
        })
        .await?;
        drop(guard);
        Ok(Response::new(convert::evidence_to_pb(evidence)?))
    }

    type AskStream = tokio_stream::wrappers::ReceiverStream<Result<pb::AskResponse, Status>>;

    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStream>, Status> {
        self.ready()?;
        let r = request.into_inner();
        let limits = self.engine.limits();
        let max_new_tokens = convert::max_new_tokens(r.max_new_tokens, limits)?;
        let loaded = self.engine.loaded()?;
        let reader = loaded.reader(&r.answer_model)?;
        let config = AnswerConfig {
            max_new_tokens,
            max_new_tokens_limit: limits.max_new_tokens,
            mode: convert::answer_mode(r.answer_mode)?.unwrap_or(loaded.answer_mode),
            abstain: Abstain::Calibrated.threshold(&reader, loaded.abstain_signal),
        };
        let query = convert::query(
            convert::QueryFields {
                collection: r.collection,
                docs: r.docs,
                question: r.question,
                budget: r.budget,
                method: r.method,
                trace: r.trace,
                filter: r.filter,
            },
            limits,
            loaded.retrieval.default_method,
        )?;
        loaded.check_method(query.method)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let engine = self.engine.clone();
        self.query.try_submit(move || {
            // The stream's receiver goes when the client does: a failed send is its cancel.
            let send = |event| {
                tx.blocking_send(Ok(pb::AskResponse { event: Some(event) }))
                    .is_ok()
            };
            let run = || -> Result<()> {
                // The stream's receiver goes with the client: a closed channel is its cancel.
                let evidence = engine.retrieve_until(&query, &|| tx.is_closed())?;
                let first = convert::evidence_to_pb(evidence.clone())?;
                if !send(pb::ask_response::Event::Evidence(first)) {
                    return Err(ServiceError::Cancelled);
                }
                let answer = engine.answer(&reader, &evidence, &config, &mut |piece| {
                    send(pb::ask_response::Event::Delta(piece.to_string()))
                })?;
                send(pb::ask_response::Event::Done(convert::answer_to_pb(answer)));
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(e.into()));
            }
        })?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    type CreateSnapshotStream = super::snapshot::SnapshotStream;

    async fn create_snapshot(
        &self,
        _request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<Self::CreateSnapshotStream>, Status> {
        if self.engine.is_stopping() {
            return Err(ServiceError::ShuttingDown.into());
        }
        Ok(Response::new(super::snapshot::create(self.engine.clone())))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let engine = self.engine.clone();
        let stats = blocking(move || engine.stats()).await?;
        let queues = [self.ingest.state(), self.query.state()];
        Ok(Response::new(convert::stats_to_pb(stats, &queues)))
    }
}
