//! The human side: subcommands a person runs in a terminal. Unlike the MCP
//! server, these own their stdout, so printing is allowed here (each line
//! marked for the stdout check).

#![allow(clippy::print_stdout)]

pub mod doctor;
pub mod join;
mod line_editor;
pub mod register;
pub mod status;
pub mod web;
