//! The webhook notifier against a real HTTP server on loopback.

use confidant_runtime::notify::{Message, Notifier, WebhookNotifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts one request, answers `status`, returns the raw request.
async fn one_request(status: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= head_end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        socket
            .write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    (url, task)
}

fn message() -> Message {
    Message {
        channel: "email".into(),
        address: "jane@example.org".into(),
        subject: "Your verification code".into(),
        body: "Your code is 123456".into(),
    }
}

#[tokio::test]
async fn messages_are_posted_as_json_with_the_bearer_token() {
    let (url, server) = one_request("204 No Content").await;
    let notifier = WebhookNotifier::new(&url, Some("gateway-secret".into())).unwrap();
    notifier.send(&message()).await.unwrap();
    let request = server.await.unwrap();
    assert!(request.starts_with("POST /send HTTP/1.1"), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer gateway-secret")
    );
    let body: serde_json::Value =
        serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["address"], "jane@example.org");
    assert_eq!(body["body"], "Your code is 123456");
}

#[tokio::test]
async fn a_failing_gateway_is_reported_without_its_body() {
    let (url, server) = one_request("502 Bad Gateway").await;
    let notifier = WebhookNotifier::new(&url, None).unwrap();
    let err = notifier.send(&message()).await.unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");
    server.await.unwrap();
    assert!(WebhookNotifier::new("http://gateway.firm.example/send", None).is_err());
}
