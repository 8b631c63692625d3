"""A month's invoice as a page to print or save as PDF: the site's frame on screen, only the invoice on
paper."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame
from portal.state.invoice import InvoiceState

# On paper only the invoice: the frame around <main> (navigation, footer) and the page's own buttons go.
PRINT_CSS = """
@media print {
  :has(> main) > :not(main) { display: none !important; }
  .no-print, [data-sonner-toaster] { display: none !important; }
  main { max-width: none !important; padding: 0 !important; }
  #invoice { border: none !important; box-shadow: none !important; }
  body { background: white !important; }
}
"""


def line_row(line: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.vstack(
                rx.text(line["cluster"], weight="medium"),
                rx.code(
                    line["cluster_id"],
                    size="1",
                    variant="ghost",
                    color_scheme="gray",
                    display=rx.breakpoints(initial="none", sm="inline"),
                ),
                spacing="0",
            )
        ),
        rx.table.cell(line["gpu_model"]),
        rx.table.cell(line["gpu_hours"], text_align="right"),
        rx.table.cell(line["amount"], text_align="right", white_space="nowrap"),
    )


def total_row(label: str, value: rx.Var, *, strong: bool = False, element_id: str = "") -> rx.Component:
    return rx.hstack(
        rx.text(label, weight="bold" if strong else "regular", size="3" if strong else "2"),
        rx.spacer(),
        rx.text(value, weight="bold" if strong else "regular", size="3" if strong else "2", id=element_id),
        width="100%",
    )


def invoice_body() -> rx.Component:
    invoice = InvoiceState.invoice
    return rx.card(
        rx.vstack(
            rx.flex(
                rx.vstack(
                    rx.heading("Invoice", size="7"),
                    rx.text("GPU Portal", weight="medium"),
                    rx.text("Usage of rented GPUs, metered per second", size="2", color_scheme="gray"),
                    spacing="1",
                ),
                rx.spacer(),
                rx.data_list.root(
                    rx.data_list.item(
                        rx.data_list.label("Number"),
                        rx.data_list.value(rx.code(invoice["number"]), id="invoice-number"),
                    ),
                    rx.data_list.item(
                        rx.data_list.label("Billed to"), rx.data_list.value(invoice["customer"])
                    ),
                    rx.data_list.item(
                        rx.data_list.label("Period (UTC)"),
                        rx.data_list.value(invoice["period"], id="invoice-period"),
                    ),
                    rx.data_list.item(
                        rx.data_list.label("Issued (UTC)"), rx.data_list.value(invoice["issued"])
                    ),
                    size="2",
                ),
                direction=rx.breakpoints(initial="column", sm="row"),
                gap="5",
                width="100%",
            ),
            rx.separator(size="4"),
            rx.cond(
                invoice["lines"].to(list[dict]).length() > 0,
                rx.table.root(
                    rx.table.header(
                        rx.table.row(
                            rx.table.column_header_cell("Cluster"),
                            rx.table.column_header_cell("GPU"),
                            rx.table.column_header_cell("GPU-hours", text_align="right"),
                            rx.table.column_header_cell("Amount", text_align="right"),
                        )
                    ),
                    rx.table.body(rx.foreach(invoice["lines"].to(list[dict]), line_row)),
                    width="100%",
                    id="invoice-lines",
                ),
                rx.text("No usage in this month.", color_scheme="gray", id="invoice-empty"),
            ),
            rx.vstack(
                total_row("Total", invoice["total"], strong=True, element_id="invoice-total"),
                total_row("of which paid to the GPUs' providers", invoice["providers"]),
                total_row("of which the platform's fee", invoice["fee"]),
                spacing="1",
                width="100%",
                max_width="24rem",
                align_self="end",
            ),
            rx.text(
                "Paid from your prepaid credit as the GPUs ran; nothing is due. Downtime is never charged. "
                "Dates are in UTC, as in the CSV.",
                size="1",
                color_scheme="gray",
            ),
            spacing="4",
            width="100%",
        ),
        width="100%",
        id="invoice",
    )


def invoice_page() -> rx.Component:
    return page_frame(
        rx.el.style(PRINT_CSS),
        rx.cond(
            InvoiceState.error != "",
            rx.vstack(
                rx.callout(InvoiceState.error, icon="triangle_alert", color_scheme="red", id="invoice-error"),
                rx.link("← Billing", href="/billing", size="2"),
                spacing="3",
            ),
            rx.cond(
                InvoiceState.invoice.contains("number"),
                rx.vstack(
                    rx.hstack(
                        rx.link("← Billing", href="/billing", size="2"),
                        rx.spacer(),
                        rx.button(
                            rx.icon("download", size=14),
                            "CSV",
                            size="2",
                            variant="soft",
                            on_click=InvoiceState.download_csv,
                        ),
                        rx.button(
                            rx.icon("printer", size=14),
                            "Print or save as PDF",
                            size="2",
                            on_click=rx.call_script("window.print()"),
                            id="print-invoice",
                        ),
                        width="100%",
                        align="center",
                        wrap="wrap",
                        class_name="no-print",
                    ),
                    invoice_body(),
                    spacing="4",
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), padding="4rem"),
            ),
        ),
    )


def register(app: rx.App) -> None:
    app.add_page(
        invoice_page,
        route="/billing/invoice/[month]",
        title="Invoice · GPU Portal",
        on_load=InvoiceState.load,
    )
