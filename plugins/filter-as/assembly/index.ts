// A Proxy-Wasm HTTP filter written against the AssemblyScript SDK (@solo-io/proxy-runtime), as
// a filter for Envoy would be: it sets a request header, and a response header with the request's
// method (a property).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
} from "@solo-io/proxy-runtime";
import { get_property } from "@solo-io/proxy-runtime/runtime";

class Root extends RootContext {
  createContext(context_id: u32): Context {
    return new Headers(context_id, this);
  }
}

class Headers extends Context {
  constructor(context_id: u32, root_context: Root) {
    super(context_id, root_context);
  }

  onRequestHeaders(_headers: u32, _end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-as-filter", "on");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(_headers: u32, _end_of_stream: bool): FilterHeadersStatusValues {
    const method = String.UTF8.decode(get_property("request\0method"));
    stream_context.headers.response.add("x-as-method", method);
    return FilterHeadersStatusValues.Continue;
  }
}

// the root id a use names (Envoy's root_id)
registerRootContext((context_id: u32) => {
  return new Root(context_id);
}, "filter-as");
