// One entry for every page: the server answers index.html at each page path and the path
// picks the page. Other pages load as their own chunks, so the home page carries no xterm.js
// or Markdown renderer.
import { render } from "preact";
import { Home } from "./pages/Home";
import "./style.css";

type Loader = () => Promise<() => preact.JSX.Element>;

const pages: Record<string, Loader> = {
  "/": () => Promise.resolve(Home), // the page most visits start on: in the entry chunk
  "/login": () => import("./pages/Login").then((m) => m.Login),
  "/vm_details": () => import("./pages/VmDetails").then((m) => m.VmDetails),
  "/terminal": () => import("./pages/Terminal").then((m) => m.Terminal),
  "/markdown_viewer": () => import("./pages/Markdown").then((m) => m.MarkdownViewer),
  "/keys": () => import("./pages/Keys").then((m) => m.Keys),
};

const root = document.getElementById("app")!;
const load = pages[location.pathname];
if (load) {
  load().then((Page) => render(<Page />, root));
} else {
  render(<p>No such page.</p>, root);
}
