//! HTTP/1.1 protocol upgrades (WebSocket and the like): the request is forwarded as HTTP/1.1
//! over a byte stream to the app (a mesh tunnel, or a local connection), and once the app
//! switches protocols the two upgraded connections are spliced together.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::{body::Body, drain::Drain, tunnel};

/// Sends the upgrade request `req` over `io` and returns the app's answer to the caller. The
/// upgraded connection then runs as work `drain` waits for.
pub async fn forward<IO>(
    io: IO,
    drain: &Drain,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(io).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upgrade connection ended");
        }
    });
    let downstream = hyper::upgrade::on(&mut req);
    tunnel::strip_mesh(req.headers_mut());
    let mut response = sender.send_request(req).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        drain.spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((caller, app)) => {
                    let spliced = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(caller),
                        &mut TokioIo::new(app),
                    )
                    .await;
                    if let Err(error) = spliced {
                        tracing::debug!(%error, "upgraded connection ended");
                    }
                }
                Err(error) => tracing::debug!(%error, "upgrade did not complete"),
            }
        });
    }
    Ok(response.map(Body::Incoming))
}
