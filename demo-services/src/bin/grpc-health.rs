//! `grpc-health [--ca CA_FILE] URL SERVICE`: asks `grpc.health.v1.Health/Check`
//! at URL (`http://` over h2c, `https://` trusting CA_FILE) about SERVICE,
//! prints the answer, and exits 0 if it is `SERVING`, 1 otherwise.
//!
//! `grpc-health [--ca CA_FILE] --unrouted URL`: calls a gRPC service nothing
//! serves (`/grpc.nothing.v1.Nothing/Call`), prints the status, and exits 0 if
//! it is `UNIMPLEMENTED`: what a gateway answers a service no route names.
//!
//! For the demo's and the Swarm stack's checks, with no other gRPC client at hand.

use std::process::ExitCode;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ca = match args.iter().position(|a| a == "--ca") {
        Some(i) if i + 1 < args.len() => {
            let path = args.remove(i + 1);
            args.remove(i);
            match std::fs::read(&path) {
                Ok(pem) => Some(pem),
                Err(err) => return usage(&format!("{path}: {err}")),
            }
        }
        Some(_) => return usage("--ca needs a file"),
        None => None,
    };
    let unrouted = args.first().is_some_and(|a| a == "--unrouted");
    if unrouted {
        args.remove(0);
    }
    let (url, service) = match (unrouted, args.as_slice()) {
        (true, [url]) => (url.clone(), String::new()),
        (false, [url, service]) => (url.clone(), service.clone()),
        _ => return usage("give URL SERVICE, or --unrouted URL"),
    };
    let mut endpoint = match Channel::from_shared(url.clone()) {
        Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(5)),
        Err(err) => return usage(&format!("{url}: {err}")),
    };
    if let Some(pem) = ca {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = match endpoint.tls_config(tls) {
            Ok(endpoint) => endpoint,
            Err(err) => return usage(&format!("TLS: {err}")),
        };
    }
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(err) => {
            eprintln!("grpc-health: cannot connect to {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    if unrouted {
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(err) = grpc.ready().await {
            eprintln!("grpc-health: {err}");
            return ExitCode::FAILURE;
        }
        let path = http::uri::PathAndQuery::from_static("/grpc.nothing.v1.Nothing/Call");
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let answer = grpc.unary(tonic::Request::new(HealthCheckRequest::default()), path, codec).await;
        return match answer {
            Err(status) => {
                println!("{:?}: {}", status.code(), status.message());
                if status.code() == tonic::Code::Unimplemented { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Ok(_) => {
                println!("answered: a service nobody routes was served");
                ExitCode::FAILURE
            }
        };
    }
    match HealthClient::new(channel).check(HealthCheckRequest { service: service.clone() }).await {
        Ok(answer) => {
            let status = answer.into_inner().status();
            println!("{service}: {}", status.as_str_name());
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(status) => {
            println!("{service}: {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "grpc-health: {why}\nusage: grpc-health [--ca CA_FILE] URL SERVICE | grpc-health [--ca CA_FILE] --unrouted URL"
    );
    ExitCode::from(2)
}
