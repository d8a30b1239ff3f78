//! The OpenAPI 3 description of the JSON API, served at /api/openapi.json.
use crate::db::runs::{RunSort, RunSummary};
use serde_json::{json, Value};

/// Every path the API serves (the test suite checks the document lists exactly these).
pub const PATHS: [&str; 33] = [
    "/api/runs",
    "/api/runs/{id}",
    "/api/runs/{id}/cancel",
    "/api/runs/{id}/resume",
    "/api/runs/{id}/metrics",
    "/api/runs/{id}/evaluations",
    "/api/runs/{id}/checkpoints",
    "/api/runs/{id}/checkpoints/{ckpt}/download",
    "/api/runs/{id}/events",
    "/api/estimate",
    "/api/presets",
    "/api/datasets",
    "/api/datasets/downloads",
    "/api/datasets/stats",
    "/api/health",
    "/api/version",
    "/api/devices",
    "/api/openapi.json",
    "/api/login",
    "/api/evals",
    "/api/evals/{id}",
    "/api/evals/{id}/cancel",
    "/api/evals/{id}/restart",
    "/api/encoders",
    "/api/encoders/{name}",
    "/api/sweeps",
    "/api/sweeps/plan",
    "/api/sweeps/{id}",
    "/api/sweeps/{id}/table",
    "/api/sweeps/{id}/cancel",
    "/api/sweeps/{id}/resume",
    "/api/sweep-recipes",
    "/metrics",
];

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_response(description: &str, body: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": body}}})
}

fn error(description: &str) -> Value {
    json_response(description, schema("Error"))
}

fn id_param(name: &str, what: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": what,
           "schema": {"type": "integer", "minimum": 1}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": schema})
}

fn run_and_config() -> Value {
    json!({"type": "object", "required": ["run", "config"],
           "properties": {"run": schema("RunSummary"), "config": schema("RunConfig")}})
}

fn run_only() -> Value {
    json!({"type": "object", "required": ["run"], "properties": {"run": schema("RunSummary")}})
}

/// The sweeps' paths (apart from the rest: one `json!` of every path is too deep a macro).
fn sweep_paths() -> Value {
    let sweep_id = id_param("id", "sweep id");
    json!({
        "/api/sweeps": {
            "get": {
                "summary": "List sweeps, newest first, each with its state read from its members",
                "responses": {"200": json_response("the sweeps", json!({"type": "object", "properties": {"sweeps": {"type": "array", "items": schema("SweepSummary")}}}))}
            },
            "post": mutating(json!({
                "summary": "Create a sweep: a base config and a grid (or a built-in recipe), each grid point queued as an ordinary run",
                "description": "Every member is checked before anything is stored; an invalid one is named `members[i].field` with its values in the message.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema("SweepSpec"),
                    "example": {"name": "momentum", "base": {"preset": "demo", "epochs": 2},
                        "vary": [{"field": "momentum", "values": [0, 0.9, 0.99]}, {"field": "seed", "values": [0, 1]}]}}}},
                "responses": {
                    "201": json_response("queued", sweep_detail()),
                    "400": json_response("the body is not JSON", schema("FieldErrors")),
                    "422": json_response("invalid: every bad field named; nothing stored", schema("FieldErrors")),
                }
            }))
        },
        "/api/sweeps/plan": {
            "post": mutating(json!({
                "summary": "What a sweep would be, stored nowhere: its members, the grid points a recipe leaves out and the estimated duration",
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema("SweepSpec")}}},
                "responses": {
                    "200": json_response("the plan", json!({"type": "object", "properties": {
                        "name": {"type": "string"}, "runs": {"type": "integer"},
                        "members": {"type": "array", "items": {"type": "string"}},
                        "skipped": {"type": "array", "items": {"type": "string"}},
                        "estimate_seconds": {"type": "number"}, "text": {"type": "string"}}})),
                    "422": json_response("invalid: every bad field named", schema("FieldErrors")),
                }
            }))
        },
        "/api/sweeps/{id}": {
            "get": {
                "summary": "A sweep with its members and the table of its grid (seeds folded into mean ± spread)",
                "parameters": [sweep_id.clone()],
                "responses": {"200": json_response("the sweep", sweep_detail()), "404": error("no such sweep")}
            },
            "delete": mutating(json!({
                "summary": "Delete a sweep with its member runs and their files",
                "parameters": [sweep_id.clone()],
                "responses": {"204": {"description": "deleted"}, "404": error("no such sweep"), "409": error("a member is running")}
            }))
        },
        "/api/sweeps/{id}/table": {
            "get": {
                "summary": "The sweep's table as a file",
                "parameters": [sweep_id.clone(), query("format", "csv (default) or md", json!({"type": "string", "enum": ["csv", "md"]}))],
                "responses": {"200": {"description": "the table", "content": {"text/csv": {"schema": {"type": "string"}}, "text/markdown": {"schema": {"type": "string"}}}},
                    "400": error("an unknown format"), "404": error("no such sweep")}
            }
        },
        "/api/sweeps/{id}/cancel": {
            "post": mutating(json!({
                "summary": "Cancel every member still to finish; completed and failed members keep their results",
                "parameters": [sweep_id.clone()],
                "responses": {"200": json_response("cancelled", json!({"type": "object", "properties": {"sweep": schema("SweepSummary")}})), "404": error("no such sweep")}
            }))
        },
        "/api/sweeps/{id}/resume": {
            "post": mutating(json!({
                "summary": "Queue the cancelled and interrupted members again, each from its latest checkpoint; failed members stay failed (a failure is a result)",
                "parameters": [sweep_id],
                "responses": {"200": json_response("queued", json!({"type": "object", "properties": {"sweep": schema("SweepSummary")}})),
                    "404": error("no such sweep"), "409": error("no member to resume")}
            }))
        },
        "/api/sweep-recipes": {
            "get": {
                "summary": "The built-in sweeps mirroring the MoCo paper's ablations, with the paper's figures",
                "responses": {"200": json_response("the recipes", json!({"type": "object", "properties": {"recipes": {"type": "array", "items": {"type": "object"}}, "paper_source": {"type": "string"}}}))}
            }
        }
    })
}

fn sweep_detail() -> Value {
    json!({"type": "object", "properties": {
        "sweep": schema("SweepSummary"), "spec": schema("SweepSpec"),
        "members": {"type": "array", "items": {"type": "object", "properties": {
            "position": {"type": "integer"}, "values": {"type": "object"}, "label": {"type": "string"},
            "outcome": {"type": "string", "description": "the run's state; a failure names its kind (failed: collapsed)"},
            "negatives": {"type": "integer", "description": "K, the negatives per query"},
            "linear_top1": {"type": ["number", "null"]}, "run": schema("RunSummary")}}},
        "rows": {"type": "array", "items": {"type": "object", "description": "one grid point with its seeds folded: mean and spread of best and final kNN and linear top-1, the paper's figure"}},
        "paper_source": {"type": ["string", "null"]}}})
}

fn mutating(mut op: Value) -> Value {
    op["security"] = json!([{"bearer": []}, {"cookie": []}]);
    op["responses"]["401"] = error("the server requires its access token");
    op
}

pub fn document() -> Value {
    let run_id = id_param("id", "run id");
    let eval_id = id_param("id", "evaluation id");
    let paths = json!({
        "/api/runs": {
            "get": {
                "summary": "List runs",
                "parameters": [
                    query("state", "only runs in this state", schema("RunState")),
                    query("preset", "only runs of this preset", schema("Preset")),
                    query("search", "case-insensitive part of the name", json!({"type": "string"})),
                    query("sort", "order: a column and a direction; `state` groups running, queued, interrupted, then finished runs",
                        json!({"type": "string", "default": "created_desc", "enum": RunSort::names()})),
                    query("limit", "at most this many", json!({"type": "integer", "minimum": 1})),
                ],
                "responses": {
                    "200": json_response("the runs", json!({"type": "object", "properties": {"runs": {"type": "array", "items": schema("RunSummary")}}})),
                    "400": json_response("a bad filter", schema("FieldErrors")),
                }
            },
            "post": mutating(json!({
                "summary": "Create and queue a run",
                "description": "The body is a partial config: missing keys come from `preset` (default cifar). Dataset paths are relative to the data directory and must resolve inside it.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema("RunConfigPatch"),
                    "example": {"preset": "cifar", "name": "demo", "epochs": 2, "dataset": {"kind": "synthetic", "synthetic_train": 200}}}}},
                "responses": {
                    "201": json_response("queued", run_and_config()),
                    "400": json_response("the body is not JSON", schema("FieldErrors")),
                    "413": {"description": "the body is larger than 1 MiB"},
                    "422": json_response("invalid config; nothing stored", schema("FieldErrors")),
                }
            })),
        },
        "/api/runs/{id}": {
            "get": {
                "summary": "A run and its config",
                "parameters": [run_id],
                "responses": {"200": json_response("the run", run_and_config()), "404": error("no such run")}
            },
            "delete": mutating(json!({
                "summary": "Delete a run with its metrics, events and files",
                "parameters": [run_id],
                "responses": {"204": {"description": "deleted"}, "404": error("no such run"),
                              "409": error("the run is running: cancel it first")}
            })),
        },
        "/api/runs/{id}/cancel": {
            "post": mutating(json!({
                "summary": "Cancel a run",
                "description": "A queued or interrupted run never starts; a running run writes a full checkpoint and stops within one step (its state becomes cancelled then).",
                "parameters": [run_id],
                "responses": {"200": json_response("cancelled or cancel requested", run_only()),
                              "404": error("no such run"), "409": error("the run already ended")}
            })),
        },
        "/api/runs/{id}/resume": {
            "post": mutating(json!({
                "summary": "Queue an interrupted, cancelled or failed run again",
                "description": "It continues from its latest full checkpoint (from the start when it has none).",
                "parameters": [run_id],
                "responses": {"200": json_response("queued", run_only()),
                              "404": error("no such run"), "409": error("the run cannot be resumed")}
            })),
        },
        "/api/runs/{id}/metrics": {
            "get": {
                "summary": "Metric series, downsampled keeping each bucket's minimum and maximum",
                "parameters": [
                    run_id,
                    query("names", "comma-separated metric names (default: all recorded)", json!({"type": "string", "example": "loss,lr"})),
                    query("since_step", "only steps after this one", json!({"type": "integer", "default": 0})),
                    query("max_points", "points per series at most", json!({"type": "integer", "default": 1000, "minimum": 2, "maximum": 100000})),
                ],
                "responses": {
                    "200": json_response("series of [step, value] pairs by name", json!({"type": "object", "properties": {"series": {"type": "object",
                        "additionalProperties": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}}}})),
                    "400": json_response("a bad parameter", schema("FieldErrors")),
                    "404": error("no such run"),
                }
            }
        },
        "/api/runs/{id}/evaluations": {
            "get": {
                "summary": "kNN top-1 after each evaluated epoch",
                "parameters": [run_id],
                "responses": {"200": json_response("evaluations", json!({"type": "object", "properties": {"evaluations": {"type": "array", "items": schema("Evaluation")}}})),
                              "404": error("no such run")}
            }
        },
        "/api/runs/{id}/checkpoints": {
            "get": {
                "summary": "Checkpoints and encoder exports of a run",
                "parameters": [run_id],
                "responses": {"200": json_response("checkpoints", json!({"type": "object", "properties": {"checkpoints": {"type": "array", "items": schema("Checkpoint")}}})),
                              "404": error("no such run")}
            }
        },
        "/api/runs/{id}/checkpoints/{ckpt}/download": {
            "get": {
                "summary": "Download a checkpoint file",
                "description": "Streams the file with Content-Length and Content-Disposition (e.g. run-3-encoder-epoch10.safetensors); single byte ranges are answered with 206 (416 when unsatisfiable).",
                "parameters": [run_id, id_param("ckpt", "checkpoint id"),
                    {"name": "Range", "in": "header", "required": false, "schema": {"type": "string", "example": "bytes=0-1023"}}],
                "responses": {
                    "200": {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "the requested range"},
                    "404": error("no such checkpoint, or its file is gone"),
                    "416": {"description": "the range is outside the file"},
                }
            }
        },
        "/api/runs/{id}/events": {
            "get": {
                "summary": "Live events of a run (server-sent events)",
                "description": "Event types: metrics {step, epoch, values}, state {state, error, step}, evaluation {epoch, step, knn_top1}, checkpoint {id, kind, epoch, step, size_bytes, sha256, download_url}, log {level, message}. Every event has an id; reconnecting with Last-Event-ID (or ?last_event_id=) replays what was missed, exactly once.",
                "parameters": [run_id,
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer"}},
                    query("last_event_id", "as the Last-Event-ID header", json!({"type": "integer"}))],
                "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "404": error("no such run")}
            }
        },
        "/api/estimate": {
            "post": mutating(json!({
                "summary": "How long a run of this config would take here",
                "description": "The body is a partial config, as for creating a run; nothing is stored. The work is counted in multiply-accumulates of the config's encoder (4 forward passes per training image, 8 with the symmetric loss; one per image and kNN evaluation) at the device's speed, measured once per device.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema("RunConfigPatch"),
                    "example": {"preset": "demo", "dataset": {"kind": "synthetic"}}}}},
                "responses": {
                    "200": json_response("the estimate", json!({"type": "object", "properties": {
                        "seconds": {"type": "number"}, "text": {"type": "string"},
                        "steps_per_epoch": {"type": "integer"}, "total_steps": {"type": "integer"},
                        "evaluations": {"type": "integer", "description": "kNN evaluations, the untrained baseline included"},
                        "macs_per_second": {"type": "number"}, "train_images": {"type": "integer"},
                        "test_images": {"type": "integer"}, "device": {"type": "string"}}})),
                    "400": json_response("the body is not JSON", schema("FieldErrors")),
                    "422": json_response("invalid config", schema("FieldErrors")),
                }
            })),
        },
        "/api/presets": {
            "get": {
                "summary": "The presets and their full configs",
                "responses": {"200": json_response("presets", json!({"type": "object", "properties": {"presets": {"type": "array", "items": {
                    "type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "config": schema("RunConfig")}}}}}))}
            }
        },
        "/api/datasets": {
            "get": {
                "summary": "Datasets a run can use: the built-in synthetic set first, then those found in the data directory",
                "responses": {"200": json_response("datasets", json!({"type": "object", "properties": {"datasets": {"type": "array", "items": schema("Dataset")}}}))}
            }
        },
        "/api/datasets/downloads": {
            "get": {
                "summary": "The archives the server can download (CIFAR-10, CIFAR-100, STL-10): present or not, and each one's latest download",
                "responses": {"200": json_response("downloads", json!({"type": "object", "properties": {"downloads": {"type": "array", "items": schema("Download")}}}))}
            },
            "post": mutating(json!({
                "summary": "Download an archive into the data directory in the background",
                "description": "Poll GET /api/datasets/downloads for progress. The archive is MD5-checked and unpacked into a temporary directory, then renamed into place: a failure leaves the data directory as it was. The address is the canonical one or the operator's mirror (MOCO_FETCH_MIRROR_<NAME>, MOCO_FETCH_MD5_<NAME>); `url` and `md5` are accepted only from a server started with --allow-fetch-source.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["dataset"], "additionalProperties": false, "properties": {
                    "dataset": {"type": "string", "enum": ["cifar10", "cifar100", "stl10"]},
                    "url": {"type": "string", "description": "http(s) address of the archive (only with --allow-fetch-source)"},
                    "md5": {"type": "string", "description": "its MD5, 32 hex digits (default: the canonical archive's)"}}},
                    "example": {"dataset": "cifar10"}}}},
                "responses": {
                    "202": json_response("started", json!({"type": "object", "properties": {"download": schema("Download")}})),
                    "400": json_response("the body is not JSON", schema("FieldErrors")),
                    "409": error("a download of this archive is running, or it is already in the data directory"),
                    "422": json_response("a bad field; nothing started", schema("FieldErrors")),
                }
            })),
        },
        "/api/datasets/stats": {
            "get": {
                "summary": "Per-channel mean and std of a listed dataset",
                "description": "Computed from up to 10 000 training images the first time (seconds), then remembered until the dataset's files change.",
                "parameters": [{"name": "dataset", "in": "query", "required": true, "description": "a dataset's value: synthetic or kind:path as GET /api/datasets lists it",
                    "schema": {"type": "string", "example": "cifar10:cifar-10-batches-bin"}}],
                "responses": {
                    "200": json_response("the statistics", schema("DatasetStats")),
                    "400": json_response("no dataset given", schema("FieldErrors")),
                    "404": error("no such dataset in the data directory"),
                    "422": error("the dataset's files cannot be read"),
                }
            }
        },
        "/api/health": {
            "get": {
                "summary": "Liveness and database status",
                "responses": {
                    "200": json_response("healthy", json!({"type": "object", "properties": {
                        "status": {"type": "string"}, "database": {"type": "string"},
                        "active_runs": {"type": "array", "items": {"type": "integer"}}, "uptime_seconds": {"type": "number"}}})),
                    "503": {"description": "the database is unavailable"}
                }
            }
        },
        "/api/version": {
            "get": {
                "summary": "Versions of the server, tch and libtorch",
                "responses": {"200": json_response("versions", json!({"type": "object", "properties": {
                    "version": {"type": "string"}, "tch": {"type": "string"}, "libtorch": {"type": "string"}}}))}
            }
        },
        "/api/devices": {
            "get": {
                "summary": "Devices training can run on",
                "responses": {"200": json_response("devices", json!({"type": "object", "properties": {"devices": {"type": "array", "items": {
                    "type": "object", "properties": {"name": {"type": "string", "example": "cuda:0"}, "kind": {"type": "string"}}}}}}))}
            }
        },
        "/api/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3 document"}}}
        },
        "/api/login": {
            "post": {
                "summary": "Check the access token and set it as a cookie for browser forms",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                "responses": {"200": {"description": "the token is right (a cookie is set)"}, "401": error("wrong token")}
            }
        },
        "/api/evals": {
            "get": {
                "summary": "List evaluations (linear probes and kNN of trained encoders), newest first",
                "parameters": [
                    query("runs", "comma-separated run ids: only evaluations of these runs' checkpoints", json!({"type": "string"})),
                    query("limit", "at most this many", json!({"type": "integer", "minimum": 1, "default": 200})),
                ],
                "responses": {
                    "200": json_response("the evaluations", json!({"type": "object", "properties": {"evals": {"type": "array", "items": schema("EvalSummary")}}})),
                    "400": error("a bad query parameter"),
                }
            },
            "post": mutating(json!({
                "summary": "Queue an evaluation of a run's checkpoint or of an encoder file; the encoder and the dataset are checked before anything is stored",
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema("EvalRequest")}}},
                "responses": {
                    "201": json_response("queued", json!({"type": "object", "properties": {"eval": schema("EvalSummary"), "settings": {"type": "object", "description": "the ProbeConfig or KnnConfig it runs with"}}})),
                    "400": json_response("the body is not JSON", schema("FieldErrors")),
                    "422": json_response("invalid: every bad field named", schema("FieldErrors")),
                }
            }))
        },
        "/api/evals/{id}": {
            "get": {
                "summary": "One evaluation: its summary, settings, epochs so far and final result",
                "parameters": [eval_id.clone()],
                "responses": {
                    "200": json_response("the evaluation", json!({"type": "object", "properties": {
                        "eval": schema("EvalSummary"), "settings": {"type": "object"},
                        "epochs": {"type": "array", "items": schema("EvalEpoch")},
                        "result": {"type": ["object", "null"], "description": "the probe's or kNN's result once completed"}}})),
                    "404": error("no such evaluation"),
                }
            },
            "delete": mutating(json!({
                "summary": "Delete an evaluation that is not running",
                "parameters": [eval_id.clone()],
                "responses": {"204": {"description": "deleted"}, "404": error("no such evaluation"), "409": error("it is running")}
            }))
        },
        "/api/evals/{id}/cancel": {
            "post": mutating(json!({
                "summary": "Cancel a queued, running or interrupted evaluation",
                "parameters": [eval_id.clone()],
                "responses": {"200": json_response("cancelled, or asked to stop", json!({"type": "object", "properties": {"eval": schema("EvalSummary")}})),
                    "404": error("no such evaluation"), "409": error("it already ended")}
            }))
        },
        "/api/evals/{id}/restart": {
            "post": mutating(json!({
                "summary": "Queue an interrupted, cancelled or failed evaluation again; it starts over",
                "parameters": [eval_id],
                "responses": {"200": json_response("queued", json!({"type": "object", "properties": {"eval": schema("EvalSummary")}})),
                    "404": error("no such evaluation"), "409": error("it is queued, running or completed")}
            }))
        },
        "/api/encoders": {
            "get": {
                "summary": "Encoder files of the data directory's encoders/ folder, for evaluations' `encoder`",
                "responses": {"200": json_response("the files", json!({"type": "object", "properties": {"encoders": {"type": "array", "items": schema("EncoderFile")}}}))}
            }
        },
        "/api/encoders/{name}": {
            "put": mutating(json!({
                "summary": "Upload an encoder file (the body): a moco-server checkpoint or encoder export, or torchvision-keyed ResNet weights. It is loaded as an evaluation would load it before it is kept; an existing file is never replaced",
                "parameters": [{"name": "name", "in": "path", "required": true, "description": "file name: letters, digits, '.', '_' or '-', ending in .safetensors",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]*\\.safetensors$"}}],
                "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": json_response("stored", json!({"type": "object", "properties": {"encoder": schema("EncoderFile")}})),
                    "413": error("larger than 1 GiB"),
                    "422": json_response("not an encoder, a bad name or a name taken (field `file`)", schema("FieldErrors"))}
            }))
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: runs by state, images/s and steps of running runs",
                "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }
        },
    });
    let mut paths = paths;
    paths
        .as_object_mut()
        .expect("the paths are an object")
        .extend(sweep_paths().as_object().expect("an object").clone());
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "moco-server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Momentum Contrast training server: runs, live metrics, checkpoints, evaluations of trained encoders. Requests that change something need `Authorization: Bearer <token>` when the server listens beyond loopback or was given a token."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": super::auth::COOKIE}
            },
            "schemas": {
                "Evaluation": {"type": "object", "properties": {"epoch": {"type": "integer"}, "step": {"type": "integer"},
                    "knn_top1": {"type": "number"}, "features": {"type": "string"}, "created_at": {"type": "string"}}},
                "Checkpoint": {"type": "object", "properties": {"id": {"type": "integer"}, "kind": {"type": "string", "enum": ["full", "encoder"]},
                    "epoch": {"type": "integer"}, "step": {"type": "integer"}, "size_bytes": {"type": "integer"},
                    "sha256": {"type": "string"}, "created_at": {"type": "string"}, "download_url": {"type": "string"}}},
                "Dataset": {"type": "object", "properties": {"kind": {"type": "string"}, "path": {"type": ["string", "null"]},
                    "label": {"type": "string"}, "images": {"type": "integer"}, "test_images": {"type": "integer"},
                    "classes": {"type": "integer"}, "image_size": {"type": ["integer", "null"]},
                    "config": {"type": "object", "description": "the `dataset` object to post"}}},
                "Download": {"type": "object", "properties": {
                    "dataset": {"type": "string", "enum": ["cifar10", "cifar100", "stl10"]}, "title": {"type": "string"},
                    "dir": {"type": "string", "description": "where it unpacks, relative to the data directory"},
                    "present": {"type": "boolean"},
                    "state": {"type": "string", "enum": ["idle", "running", "done", "failed"]},
                    "stage": {"type": ["string", "null"], "enum": ["downloading", "extracting", null]},
                    "bytes": {"type": "integer"}, "total": {"type": ["integer", "null"]},
                    "approx_bytes": {"type": "integer", "description": "size of the canonical archive"},
                    "bytes_per_sec": {"type": ["number", "null"]}, "eta_seconds": {"type": ["number", "null"]},
                    "error": {"type": ["string", "null"]},
                    "started_at": {"type": ["string", "null"], "format": "date-time"},
                    "finished_at": {"type": ["string", "null"], "format": "date-time"},
                    "mirror": {"type": "boolean", "description": "from a mirror rather than the canonical address"}}},
                "DatasetStats": {"type": "object", "properties": {"dataset": {"type": "string"},
                    "mean": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                    "std": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                    "class_names": {"type": "array", "items": {"type": "string"}}}},
                "EncoderFile": {"type": "object", "properties": {"path": {"type": "string", "description": "relative to the data directory"},
                    "size_bytes": {"type": "integer"}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "FieldErrors": {"type": "object", "required": ["errors"], "properties": {"errors": {"type": "array", "items": {
                    "type": "object", "required": ["field", "message"], "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}}
            }
        }
    });
    // RunConfig and the types it uses, generated from the settings' declaration; RunSummary and
    // RunState from their types.
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    schemas.extend(crate::config::settings::openapi_schemas());
    let mut generator = crate::config::settings::openapi_generator();
    generator.subschema_for::<RunSummary>();
    generator.subschema_for::<crate::db::evals::EvalSummary>();
    generator.subschema_for::<crate::db::evals::EvalEpoch>();
    generator.subschema_for::<crate::jobs::EvalRequest>();
    generator.subschema_for::<crate::sweep::SweepSpec>();
    generator.subschema_for::<crate::db::sweeps::SweepSummary>();
    schemas.extend(generator.take_definitions(true));
    doc
}
