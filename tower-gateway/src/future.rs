//! The future most layers of this crate return: an answer the layer made
//! itself, or the inner service's response with its body wrapped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;

pin_project! {
    /// Answers at once, or with what the inner service answers.
    #[project = AnswerOrCallProj]
    #[derive(Debug)]
    pub(crate) enum AnswerOrCall<F, B> {
        Call { #[pin] future: F },
        Answer { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B> AnswerOrCall<F, B> {
    pub(crate) fn call(future: F) -> Self {
        Self::Call { future }
    }

    pub(crate) fn answer(response: Response<ResponseBody<B>>) -> Self {
        Self::Answer { response: Some(response) }
    }
}

impl<F, B, E> Future for AnswerOrCall<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerOrCallProj::Call { future } => {
                future.poll(cx).map(|result| result.map(|response| response.map(ResponseBody::new)))
            }
            AnswerOrCallProj::Answer { response } => Poll::Ready(Ok(response.take().expect("polled after completion"))),
        }
    }
}

pin_project! {
    /// The response future of a layer that answers at once or passes the
    /// request on: [`StripPrefix`](crate::StripPrefix) and
    /// [`ReserveUpgrade`](crate::upgrade::ReserveUpgrade).
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        pub(crate) inner: AnswerOrCall<F, B>,
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
