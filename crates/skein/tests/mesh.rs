//! End-to-end tests through two real proxies: client → proxy A → proxy B → server, over
//! real sockets with real clients (curl, hyper, tonic, tungstenite).

mod mesh {
    pub mod admin;
    pub mod bad_input;
    pub mod h2;
    pub mod http1;
    pub mod overload;
    pub mod tcp;
    pub mod websocket;
}
