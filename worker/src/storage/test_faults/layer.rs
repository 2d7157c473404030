//! The HTTP side of [`super::Faults`]: which S3 operation a request is, the injected
//! answers, and the slow body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3Service;
use tokio::net::TcpListener;

use super::{FaultKind, Faults, OpenUpload, Target};

type StdError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, StdError>;

/// The S3 operation of a request, as far as the layer cares.
enum Op {
    Targeted(Target),
    Create { bucket: String, key: String },
    Other,
}

fn classify<B>(req: &Request<B>) -> Op {
    let query = req.uri().query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|kv| kv.split('=').next() == Some(name));
    let path = req.uri().path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let m = req.method();
    if *m == Method::GET && !key.is_empty() && req.headers().contains_key(hyper::header::RANGE) {
        Op::Targeted(Target::Get)
    } else if *m == Method::PUT && has("partNumber") && has("uploadId") {
        Op::Targeted(Target::UploadPart)
    } else if *m == Method::POST && has("uploadId") {
        Op::Targeted(Target::Complete)
    } else if *m == Method::POST && has("uploads") {
        Op::Create {
            bucket: percent_decode(bucket),
            key: percent_decode(key),
        }
    } else {
        Op::Other
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// S3's answer to a request naming an upload that was completed, aborted or never created:
/// `404 NoSuchUpload` (s3s-fs answers `403 AccessDenied`).
fn missing_upload<B>(faults: &Faults, req: &Request<B>) -> Option<Response<ResponseBody>> {
    let query = req.uri().query()?;
    let id = query.split('&').find_map(|kv| kv.strip_prefix("uploadId="))?;
    let well_formed = !id.is_empty() && id.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-');
    (well_formed && !faults.upload_exists(id)).then(|| {
        xml_error(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified multipart upload does not exist.",
            req.uri().path(),
        )
    })
}

fn xml_error(status: StatusCode, code: &str, message: &str, resource: &str) -> Response<ResponseBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>{resource}</Resource><RequestId>shardmerge-chaos</RequestId></Error>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// Serves `service` on `listener` through the layer; `inject` is false for the test's own
/// endpoint.
pub(in crate::storage) async fn serve(listener: TcpListener, service: S3Service, faults: Arc<Faults>, inject: bool) {
    let http = ConnBuilder::new(TokioExecutor::new());
    while let Ok((socket, _)) = listener.accept().await {
        let (service, faults) = (service.clone(), faults.clone());
        let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(service.clone(), faults.clone(), inject, req)
        });
        let conn = http.serve_connection(TokioIo::new(socket), handler).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn handle(
    service: S3Service,
    faults: Arc<Faults>,
    inject: bool,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, StdError> {
    let op = classify(&req);
    let fault = match (&op, inject) {
        (Op::Targeted(target), true) => faults.draw(*target),
        _ => None,
    };
    let resource = req.uri().path().to_owned();
    match fault {
        Some(kind @ (FaultKind::InternalError | FaultKind::SlowDown)) => {
            // Read the request first, so the client sees the answer rather than a broken pipe.
            let _ = req.into_body().collect().await;
            return Ok(if kind == FaultKind::SlowDown {
                xml_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "Please reduce your request rate.",
                    &resource,
                )
            } else {
                xml_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                    &resource,
                )
            });
        }
        Some(FaultKind::Reset) => return Err("injected fault: connection reset".into()),
        _ => {}
    }
    if let Some(missing) = missing_upload(&faults, &req) {
        let _ = req.into_body().collect().await;
        return Ok(missing);
    }
    // Like S3, an operation runs to its end even when the client goes away meanwhile.
    let call = hyper::service::Service::call(&service, req);
    let resp = tokio::spawn(call).await?.map_err(StdError::from)?;
    let resp = match op {
        Op::Create { bucket, key } if resp.status().is_success() => {
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&bytes);
            if let Some(id) = text
                .split_once("<UploadId>")
                .and_then(|(_, rest)| rest.split_once("</UploadId>"))
                .map(|(id, _)| id.to_owned())
            {
                faults.track(OpenUpload {
                    bucket,
                    key,
                    upload_id: id,
                });
            }
            Response::from_parts(parts, Full::new(bytes).map_err(|e| match e {}).boxed_unsync())
        }
        _ => resp.map(BodyExt::boxed_unsync),
    };
    match fault {
        Some(FaultKind::LostReply) => {
            // Let the operation finish (CompleteMultipartUpload answers while it works).
            let _ = resp.into_body().collect().await;
            Err("injected fault: reply lost".into())
        }
        Some(FaultKind::SlowBody) => {
            let budget = faults.slow_budget();
            Ok(resp.map(|b| SlowBody::new(b, budget).boxed_unsync()))
        }
        _ => Ok(resp),
    }
}

/// A response body delayed by `budget` in total: a quarter before the first frame and a
/// quarter after each of the next data frames until the budget is spent.
struct SlowBody {
    inner: ResponseBody,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    step: Duration,
    left: Duration,
}

impl SlowBody {
    fn new(inner: ResponseBody, budget: Duration) -> SlowBody {
        let step = budget / 4;
        SlowBody {
            inner,
            sleep: Some(Box::pin(tokio::time::sleep(step))),
            step,
            left: budget.saturating_sub(step),
        }
    }
}

impl Body for SlowBody {
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if !this.left.is_zero() && matches!(&frame, Some(Ok(f)) if f.is_data()) {
            let d = this.step.min(this.left);
            this.left -= d;
            this.sleep = Some(Box::pin(tokio::time::sleep(d)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.sleep.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
