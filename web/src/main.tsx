// One bundle for every page: the server answers index.html at each page path and the path
// picks the page.
import { render } from "preact";
import "./style.css";
import { Home } from "./pages/Home";
import { Keys } from "./pages/Keys";
import { Login } from "./pages/Login";
import { MarkdownViewer } from "./pages/Markdown";
import { Terminal } from "./pages/Terminal";
import { VmDetails } from "./pages/VmDetails";

const pages: Record<string, () => preact.JSX.Element> = {
  "/": Home,
  "/login": Login,
  "/vm_details": VmDetails,
  "/terminal": Terminal,
  "/markdown_viewer": MarkdownViewer,
  "/keys": Keys,
};

const Page = pages[location.pathname] ?? (() => <p>No such page.</p>);
render(<Page />, document.getElementById("app")!);
