//! Who may call the coordinator: one credential per API. Clients (`submit`, `status`,
//! `cancel`) present the client token (`SHARDMERGE_TOKEN`) to the job API; workers present the
//! worker token (`SHARDMERGE_WORKER_TOKEN`) to the worker API. Neither token opens the other
//! API, so a client cannot register as a worker, lease units or report parts.
//!
//! An API whose token is not configured is served unauthenticated only on a loopback listener
//! (or with `--allow-unauthenticated`): the coordinator refuses to start otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Request, Status};

/// The coordinator's credentials.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Token of the job API (`SHARDMERGE_TOKEN`).
    pub client: Option<String>,
    /// Token of the worker API (`SHARDMERGE_WORKER_TOKEN`).
    pub worker: Option<String>,
    /// Serve an API without its token on a non-loopback listener (`--allow-unauthenticated`).
    pub allow_unauthenticated: bool,
}

/// A configuration the coordinator refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Both tokens are the same: either would open both APIs.
    #[error(
        "SHARDMERGE_TOKEN and SHARDMERGE_WORKER_TOKEN are the same; use two different tokens, or a client \
         could call the worker API"
    )]
    SameToken,
    /// An API would be open to the network.
    #[error(
        "refusing to serve the {api} API without a token on {addr}, which is not a loopback address: set {var} \
         (or --allow-unauthenticated, for a trusted, isolated network only)"
    )]
    Unauthenticated {
        /// `job` or `worker`.
        api: &'static str,
        /// The listener's address.
        addr: SocketAddr,
        /// The variable that sets the missing token.
        var: &'static str,
    },
}

impl Credentials {
    /// Whether this configuration may serve on `addr`: the tokens differ, and an API without
    /// a token only on a loopback address (or with `allow_unauthenticated`).
    pub fn validate(&self, addr: SocketAddr) -> Result<(), AuthError> {
        if let (Some(c), Some(w)) = (&self.client, &self.worker)
            && constant_time_eq(c.as_bytes(), w.as_bytes())
        {
            return Err(AuthError::SameToken);
        }
        if addr.ip().is_loopback() || self.allow_unauthenticated {
            return Ok(());
        }
        match (&self.client, &self.worker) {
            (None, _) => Err(AuthError::Unauthenticated {
                api: "job",
                addr,
                var: "SHARDMERGE_TOKEN",
            }),
            (_, None) => Err(AuthError::Unauthenticated {
                api: "worker",
                addr,
                var: "SHARDMERGE_WORKER_TOKEN",
            }),
            _ => Ok(()),
        }
    }

    /// [`Credentials::validate`]s the configuration for the listener's address; returns the
    /// interceptors of the job API and of the worker API.
    pub fn interceptors(&self, addr: SocketAddr) -> Result<(CheckToken, CheckToken), AuthError> {
        self.validate(addr)?;
        for (token, api, var) in [
            (&self.client, "job", "SHARDMERGE_TOKEN"),
            (&self.worker, "worker", "SHARDMERGE_WORKER_TOKEN"),
        ] {
            if token.is_some() {
                continue;
            }
            if addr.ip().is_loopback() {
                tracing::info!(%addr, "the {api} API accepts requests without a token on loopback ({var} is not set)");
            } else {
                tracing::warn!(%addr, "the {api} API accepts requests without a token (--allow-unauthenticated)");
            }
        }
        let arc = |t: &Option<String>| t.as_deref().map(Arc::from);
        Ok((
            CheckToken {
                api: Api::Job,
                want: arc(&self.client),
                other: arc(&self.worker),
            },
            CheckToken {
                api: Api::Worker,
                want: arc(&self.worker),
                other: arc(&self.client),
            },
        ))
    }
}

/// Which API an interceptor guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// JobService: clients.
    Job,
    /// WorkerService: workers.
    Worker,
}

/// Checks the bearer token (`authorization: Bearer TOKEN`) of every request to one API: a
/// missing or unknown token is `UNAUTHENTICATED`, the other API's token `PERMISSION_DENIED`.
#[derive(Clone)]
pub struct CheckToken {
    api: Api,
    want: Option<Arc<str>>,
    other: Option<Arc<str>>,
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.want else { return Ok(req) };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let (var, what, wrong) = match self.api {
            Api::Job => (
                "SHARDMERGE_TOKEN",
                "cluster token",
                "the worker token (SHARDMERGE_WORKER_TOKEN) is for workers; the job API needs the cluster token \
                 (SHARDMERGE_TOKEN)",
            ),
            Api::Worker => (
                "SHARDMERGE_WORKER_TOKEN",
                "worker token",
                "the cluster token (SHARDMERGE_TOKEN) is for clients; the worker API needs the worker token \
                 (SHARDMERGE_WORKER_TOKEN)",
            ),
        };
        match got {
            Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => Ok(req),
            Some(t)
                if self
                    .other
                    .as_ref()
                    .is_some_and(|o| constant_time_eq(t.as_bytes(), o.as_bytes())) =>
            {
                Err(Status::permission_denied(wrong))
            }
            Some(_) => Err(Status::unauthenticated(format!("invalid {what}"))),
            None => Err(Status::unauthenticated(format!("missing {what} (set {var})"))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn creds(client: Option<&str>, worker: Option<&str>) -> Credentials {
        Credentials {
            client: client.map(String::from),
            worker: worker.map(String::from),
            allow_unauthenticated: false,
        }
    }

    fn call(i: &mut CheckToken, token: Option<&str>) -> Result<(), Status> {
        let mut req = Request::new(());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        i.call(req).map(|_| ())
    }

    const LOOPBACK: &str = "127.0.0.1:7070";
    const ANY: &str = "0.0.0.0:7070";

    #[test]
    fn each_api_takes_only_its_own_token() {
        let (mut job, mut worker) = creds(Some("c"), Some("w")).interceptors(ANY.parse().unwrap()).unwrap();
        assert!(call(&mut job, Some("c")).is_ok());
        assert!(call(&mut worker, Some("w")).is_ok());
        let e = call(&mut worker, Some("c")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("the worker API needs the worker token"), "{e:?}");
        let e = call(&mut job, Some("w")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        for t in [None, Some("x")] {
            assert_eq!(call(&mut job, t).unwrap_err().code(), tonic::Code::Unauthenticated);
            assert_eq!(call(&mut worker, t).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn an_api_without_a_token_is_open_only_on_loopback() {
        for (c, w) in [(None, None), (Some("c"), None), (None, Some("w"))] {
            let (mut job, mut worker) = creds(c, w).interceptors(LOOPBACK.parse().unwrap()).unwrap();
            assert_eq!(call(&mut job, None).is_ok(), c.is_none());
            assert_eq!(call(&mut worker, None).is_ok(), w.is_none());
            let e = creds(c, w)
                .interceptors(ANY.parse().unwrap())
                .err()
                .unwrap()
                .to_string();
            let var = if c.is_none() {
                "SHARDMERGE_TOKEN"
            } else {
                "SHARDMERGE_WORKER_TOKEN"
            };
            assert!(e.contains(var) && e.contains("0.0.0.0:7070"), "{e}");
            let mut open = creds(c, w);
            open.allow_unauthenticated = true;
            assert!(open.interceptors(ANY.parse().unwrap()).is_ok());
        }
        assert!(creds(None, None).interceptors("[::1]:1".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_same_token_for_both_apis_is_refused() {
        let e = creds(Some("t"), Some("t"))
            .interceptors(LOOPBACK.parse().unwrap())
            .err()
            .unwrap();
        assert!(matches!(e, AuthError::SameToken));
    }
}
