//! A wasi:http handler that answers every request with a JSON greeting: what newt's
//! warm hello returns, so `newt bench` compares the hosts, not the functions.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasi::http::proxy::export!(Hello);

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the response body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("the body stream is taken once");
        stream
            .blocking_write_and_flush(br#"{"greeting":"Hello, world!"}"#)
            .expect("writing the greeting");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finishing the body");
    }
}
